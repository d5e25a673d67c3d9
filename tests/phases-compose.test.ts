/**
 * Issue 18: `--phase pretrain` then `--phase sft`, as two runs of dist/train in one folder,
 * end exactly as one `--phase pipeline`: the pretrain run moved to checkpoints/pretrain/ (by
 * renames, before SFT writes anything, crash-safe), the SFT run in checkpoints/. SFT's
 * init_from omitted starts from the pretrain best, "none" from fresh weights (said); an
 * unfinished pretrain run is never moved.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join, relative } from "node:path";
import { NativeModel } from "../src/backend/native.ts";
import { loadCheckpoint } from "../src/checkpoint/checkpoint.ts";
import { loadPhaseConfig, PHASE_DEFAULTS, TRAIN_DEFAULTS } from "../src/config.ts";
import { exitCodeOf } from "../src/errors.ts";
import { initParams } from "../src/model/layout.ts";
import { evaluate } from "../src/train/loop.ts";
import { openPhaseData } from "../src/train/phase-data.ts";
import { runTraining, type RunRequest } from "../src/train/run.ts";
import type { StopSignal } from "../src/train/stop.ts";
import { ensureExe, EXE, sh } from "./helpers/exe.ts";
import { captureStream, makeTinyRepo, type TinyRepo } from "./helpers/repo.ts";

beforeAll(ensureExe, 120_000);

/** Tiny pretrain (10 steps, checkpoints at 5 and 10) and SFT (6 steps, at 3 and 6); sft.json without init_from. */
function composeRepo(): TinyRepo {
  const repo = makeTinyRepo({ sft: true, sftVal: "wiki", sftTrain: { total_steps: 6, eval_every: 3, ckpt_every: 3 } });
  const { init_from: _, ...sft } = json(repo.root, "configs/sft.json");
  repo.writeConfig("sft.json", sft);
  return repo;
}

function json(root: string, rel: string): Record<string, unknown> {
  return JSON.parse(readFileSync(join(root, rel), "utf8")) as Record<string, unknown>;
}

function train(root: string, phase: string, env: Record<string, string> = {}) {
  const config = phase === "pipeline" ? "configs/pipeline.json" : `configs/${phase}.json`;
  return sh([EXE, "--phase", phase, "--config", config, "--device", "cpu"], { cwd: root, env: { ...(process.env as Record<string, string>), ...env } });
}

/** Every file under checkpoints/, as paths relative to it. */
function tree(root: string): string[] {
  const dir = join(root, "checkpoints");
  const walk = (d: string): string[] => readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(join(d, e.name)) : [relative(dir, join(d, e.name))]));
  return walk(dir).sort();
}

function same(a: string, b: string, rel: string): boolean {
  return readFileSync(join(a, rel)).equals(readFileSync(join(b, rel)));
}

/** metrics.jsonl without its clock fields (tokens/s, wall time, time of day). */
function metricsValues(root: string): string[] {
  return readFileSync(join(root, "checkpoints/metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => {
      const r = JSON.parse(l) as Record<string, unknown>;
      return JSON.stringify([r.phase, r.kind, r.step, r.lr, r.train_loss, r.val_loss]);
    });
}

/** The SFT val loss of some weights (the value metrics.jsonl records at SFT's step 0). */
function sftValLoss(root: string, params: Float32Array): number {
  const config = loadPhaseConfig("configs/sft.json", "sft", root);
  const model = NativeModel.open(config.model, config.train.B, "cpu");
  try {
    model.setParams(params);
    return evaluate(model, openPhaseData(config, root).evalBatches);
  } finally {
    model.close();
  }
}

function sftStartLoss(root: string): number {
  const lines = readFileSync(join(root, "checkpoints/metrics.jsonl"), "utf8").trim().split("\n");
  const first = lines.map((l) => JSON.parse(l) as { phase: string; kind: string; step: number; val_loss: number }).find((r) => r.phase === "sft" && r.kind === "eval" && r.step === 0);
  return first!.val_loss;
}

const PIPELINE_TREE = [
  "best.pt",
  "latest.pt",
  "loss.svg",
  "metrics.jsonl",
  "pretrain/best.pt",
  "pretrain/latest.pt",
  "pretrain/step_0000005.pt",
  "pretrain/step_0000010.pt",
  "step_0000003.pt",
  "step_0000006.pt",
];

describe("pretrain then sft, as two dist/train runs, end as one pipeline", () => {
  const pipeline = composeRepo();
  const twoStep = composeRepo();
  let pipelineRun: ReturnType<typeof sh>;
  let pretrainRun: ReturnType<typeof sh>;
  let sftRun: ReturnType<typeof sh>;
  beforeAll(() => {
    pipelineRun = train(pipeline.root, "pipeline");
    pretrainRun = train(twoStep.root, "pretrain");
    sftRun = train(twoStep.root, "sft");
  }, 120_000);

  test("the same file set; best.pt, pretrain/best.pt and every other checkpoint bit-identical", () => {
    for (const r of [pipelineRun, pretrainRun, sftRun]) {
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
    }
    expect(tree(pipeline.root)).toEqual(PIPELINE_TREE);
    expect(tree(twoStep.root)).toEqual(PIPELINE_TREE);
    expect(same(pipeline.root, twoStep.root, "checkpoints/best.pt")).toBe(true);
    expect(same(pipeline.root, twoStep.root, "checkpoints/pretrain/best.pt")).toBe(true);
    for (const f of PIPELINE_TREE.filter((f) => f.endsWith(".pt"))) expect(same(pipeline.root, twoStep.root, `checkpoints/${f}`)).toBe(true);
    // the SFT model, not the pretrain one
    expect(loadCheckpoint(join(twoStep.root, "checkpoints/best.pt")).trainCfg).toEqual(json(twoStep.root, "configs/sft.json"));
    // and the same log: pretrain's records, then SFT's, with the same values
    expect(metricsValues(twoStep.root)).toEqual(metricsValues(pipeline.root));
  });

  test("the move is said in one line, before SFT's start line", () => {
    const lines = sftRun.stdout.split("\n");
    const moved = lines.filter((l) => l.includes("moved the finished pretrain run"));
    expect(moved).toEqual([
      "sft: moved the finished pretrain run (step 10) from checkpoints/ to checkpoints/pretrain/ by renaming 4 files " +
        "(step_0000005.pt, step_0000010.pt, best.pt, latest.pt); metrics.jsonl and loss.svg stay in checkpoints/",
    ]);
    expect(lines.findIndex((l) => l.startsWith("sft: weights from"))).toBeGreaterThan(lines.indexOf(moved[0]!));
  });

  test("init_from omitted: SFT starts from checkpoints/pretrain/best.pt (its val loss at step 0 is that model's), said", () => {
    expect(sftRun.stdout).toContain("sft: weights from checkpoints/pretrain/best.pt (step 10; init_from omitted: the pretrain best), fresh optimizer");
    const preBest = loadCheckpoint(join(twoStep.root, "checkpoints/pretrain/best.pt"));
    const fresh = sftValLoss(twoStep.root, initParams(preBest.modelCfg as never, 7));
    const start = sftStartLoss(twoStep.root);
    expect(start).toBeCloseTo(sftValLoss(twoStep.root, preBest.params), 6);
    expect(Math.abs(start - fresh)).toBeGreaterThan(1e-3);
  });

  test("the start lines print the mixture used", () => {
    expect(pretrainRun.stdout).toContain("mixture wiki 0.784 + roam 0.196 + primer 0.02, val wiki,");
    expect(sftRun.stdout).toContain("mixture dolly 0.5 + oasst1 0.4 + primer 0.1, val wiki,");
  });

  test("sft run again: already finished, nothing moved or changed", () => {
    const before = tree(twoStep.root).map((f) => readFileSync(join(twoStep.root, "checkpoints", f)));
    const again = train(twoStep.root, "sft");
    expect(again.code).toBe(0);
    expect(again.stdout).toContain("sft: already finished");
    expect(again.stdout).not.toContain("moved");
    expect(tree(twoStep.root)).toEqual(PIPELINE_TREE);
    tree(twoStep.root).forEach((f, i) => expect(readFileSync(join(twoStep.root, "checkpoints", f)).equals(before[i]!)).toBe(true));
  });
});

describe("the move killed after each of its steps, then run again", () => {
  // the state after `--phase pretrain`, copied for each kill point
  const template = composeRepo();
  const reference = composeRepo();
  beforeAll(() => {
    expect(train(template.root, "pretrain").code).toBe(0);
    expect(train(reference.root, "pipeline").code).toBe(0);
  }, 60_000);

  // steps: 1 the move record written, 2..5 the four renames, 6 the record removed
  for (const step of [1, 2, 3, 4, 5, 6]) {
    test(`killed after step ${step}: every file whole; the rerun finishes the move and ends as the pipeline`, () => {
      const root = mkdtempSync(join(template.root, "..", `kill-${step}-`));
      cpSync(template.root, root, { recursive: true });
      const killed = train(root, "sft", { TRAIN_TEST_KILL_AFTER_MOVE_STEP: String(step) });
      expect(killed.signal).toBe("SIGKILL");
      // every checkpoint is whole, each in one of the two folders, and SFT wrote nothing
      const pts = tree(root).filter((f) => f.endsWith(".pt"));
      expect(pts.map((f) => f.replace("pretrain/", "")).sort()).toEqual(["best.pt", "latest.pt", "step_0000005.pt", "step_0000010.pt"]);
      for (const f of pts) {
        expect(readFileSync(join(root, "checkpoints", f)).equals(readFileSync(join(template.root, "checkpoints", f.replace("pretrain/", ""))))).toBe(true);
        expect(loadCheckpoint(join(root, "checkpoints", f)).step).toBeGreaterThan(0);
      }
      expect(existsSync(join(root, "checkpoints/pretrain/.moving"))).toBe(step < 6);

      const rerun = train(root, "sft");
      expect(rerun.stderr).toBe("");
      expect(rerun.code).toBe(0);
      if (step < 6) expect(rerun.stdout).toContain("sft: finished moving the pretrain run from checkpoints/ to checkpoints/pretrain/ (an earlier move was interrupted");
      expect(tree(root)).toEqual(PIPELINE_TREE);
      for (const f of PIPELINE_TREE.filter((f) => f.endsWith(".pt"))) expect(same(reference.root, root, `checkpoints/${f}`)).toBe(true);
      rmSync(root, { recursive: true });
    }, 60_000);
  }
});

const never: StopSignal = { requested: null };

async function runIn(root: string, req: Partial<RunRequest> & Pick<RunRequest, "phase" | "configPath">, stop: StopSignal = never) {
  const out = captureStream();
  try {
    const code = await runTraining({ device: "cpu", resume: { kind: "auto" }, ...req }, { repoRoot: root, out, stop });
    return { code, text: out.text() };
  } catch (e) {
    return { code: exitCodeOf(e), text: `${out.text()}${(e as Error).message}` };
  }
}

/** Stops once metrics.jsonl has pretrain's train record of `step` (log_every 1). */
function stopAtPretrain(root: string, step: number): StopSignal {
  return {
    get requested() {
      const file = join(root, "checkpoints/metrics.jsonl");
      if (!existsSync(file)) return null;
      return readFileSync(file, "utf8").includes(`"phase":"pretrain","kind":"train","step":${step},`) ? "SIGINT" : null;
    },
  };
}

describe("an unfinished pretrain run is never moved", () => {
  test("sft exits 2, nothing moved; each way out it names works as said", async () => {
    const repo = composeRepo();
    repo.writeConfig("pretrain.json", { ...json(repo.root, "configs/pretrain.json"), train_cfg: { ...(json(repo.root, "configs/pretrain.json").train_cfg as object), log_every: 1 } });
    expect((await runIn(repo.root, { phase: "pretrain", configPath: "configs/pretrain.json" }, stopAtPretrain(repo.root, 7))).code).toBe(130);
    const handMoved = mkdtempSync(join(repo.root, "..", "hand-"));
    cpSync(repo.root, handMoved, { recursive: true });
    const listing = tree(repo.root);
    const bytes = listing.map((f) => readFileSync(join(repo.root, "checkpoints", f)));

    const refused = await runIn(repo.root, { phase: "sft", configPath: "configs/sft.json" });
    expect(refused.code).toBe(2);
    expect(refused.text).toContain("checkpoints/latest.pt is a pretrain run at step 7 of its total_steps 10: not finished");
    expect(tree(repo.root)).toEqual(listing);
    listing.forEach((f, i) => expect(readFileSync(join(repo.root, "checkpoints", f)).equals(bytes[i]!)).toBe(true));

    // way 1: finish pretraining with the command named, then the same sft command moves and runs
    const finish = /To finish pretraining first: (train --phase pretrain --config \S+)/.exec(refused.text)![1]!;
    expect(finish).toBe("train --phase pretrain --config configs/pretrain.json");
    expect((await runIn(repo.root, { phase: "pretrain", configPath: "configs/pretrain.json" })).code).toBe(0);
    const after = await runIn(repo.root, { phase: "sft", configPath: "configs/sft.json" });
    expect(after.code).toBe(0);
    expect(after.text).toContain("moved the finished pretrain run (step 10)");

    // way 2: the shell command named moves it by hand; SFT then starts from that (step 7) best.pt
    const way2 = (await runIn(handMoved, { phase: "sft", configPath: "configs/sft.json" })).text;
    const command = /To start SFT from it as it is: (.+), then run the same/.exec(way2)![1]!;
    expect(command).toBe("mkdir -p checkpoints/pretrain && mv checkpoints/step_*.pt checkpoints/best.pt checkpoints/latest.pt checkpoints/pretrain/");
    expect(sh(["sh", "-c", command], { cwd: handMoved }).code).toBe(0);
    const sft = await runIn(handMoved, { phase: "sft", configPath: "configs/sft.json" });
    expect(sft.code).toBe(0);
    expect(sft.text).toContain("sft: weights from checkpoints/pretrain/best.pt (step 5;");
  }, 60_000);
});

describe("init_from", () => {
  test('"none": a finished pretrain run is still moved aside, and SFT starts from fresh weights, said', async () => {
    const repo = composeRepo();
    repo.writeConfig("sft.json", { ...json(repo.root, "configs/sft.json"), init_from: "none" });
    expect((await runIn(repo.root, { phase: "pretrain", configPath: "configs/pretrain.json" })).code).toBe(0);
    const { code, text } = await runIn(repo.root, { phase: "sft", configPath: "configs/sft.json" });
    expect(code).toBe(0);
    expect(text).toContain("moved the finished pretrain run (step 10)");
    expect(text).toContain('sft: fresh GPT-2 init (seed 7) (init_from "none" in configs/sft.json: not from pretrained weights)');
    const model = loadCheckpoint(join(repo.root, "checkpoints/pretrain/best.pt")).modelCfg;
    expect(sftStartLoss(repo.root)).toBeCloseTo(sftValLoss(repo.root, initParams(model as never, 7)), 6);
    expect(tree(repo.root)).toEqual(PIPELINE_TREE);
  });

  test("omitted, with no pretrain run anywhere: exit 2 naming where it looked and the command that makes it", async () => {
    const repo = composeRepo();
    const { code, text } = await runIn(repo.root, { phase: "sft", configPath: "configs/sft.json" });
    expect(code).toBe(2);
    expect(text).toContain(`${join(repo.root, "checkpoints/pretrain/best.pt")}: the checkpoint to start SFT from does not exist (init_from is omitted in configs/sft.json`);
    expect(text).toContain("Looked at checkpoints/pretrain/best.pt, and at checkpoints/latest.pt for a finished pretrain run to move there (absent)");
    expect(text).toContain("train --phase pretrain --config configs/pretrain.json makes it (this command then moves that run to checkpoints/pretrain/");
    expect(text).toContain('"init_from": "none"');
    expect(existsSync(join(repo.root, "checkpoints"))).toBe(false);
    // the command it names does make it
    expect((await runIn(repo.root, { phase: "pretrain", configPath: "configs/pretrain.json" })).code).toBe(0);
    expect((await runIn(repo.root, { phase: "sft", configPath: "configs/sft.json" })).code).toBe(0);
  });
});

describe("defaults keep their word across versions", () => {
  // A pretrain config that leaves base_lr, sources and val_source to the defaults.
  function defaultsRepo(): TinyRepo {
    const repo = makeTinyRepo();
    const { base_lr: _, ...train } = json(repo.root, "configs/pretrain.json").train_cfg as Record<string, unknown>;
    repo.writeConfig("pretrain.json", { model_cfg_path: "configs/model.json", train_cfg: { ...train, log_every: 1 } });
    return repo;
  }
  const pretrain = { phase: "pretrain", configPath: "configs/pretrain.json" } as const;

  test("the checkpoint records the defaults a run took; a resume after the defaults changed continues bit-exactly, said", async () => {
    const straight = defaultsRepo();
    expect((await runIn(straight.root, pretrain)).code).toBe(0);
    const latest = loadCheckpoint(join(straight.root, "checkpoints/latest.pt"));
    expect(latest.trainCfg).toEqual(json(straight.root, "configs/pretrain.json")); // train_cfg stays verbatim
    const recorded = latest.opt!.trainDefaults as { train_cfg: Record<string, unknown>; sources: unknown; val_source: unknown };
    expect(recorded.train_cfg).toEqual({ base_lr: 3e-4, max_nonfinite_steps: 3 });
    expect(recorded.sources).toEqual({ wiki: 0.784, roam: 0.196, primer: 0.02 });
    expect(recorded.val_source).toBe("wiki");

    const broken = defaultsRepo();
    expect((await runIn(broken.root, pretrain, stopAtPretrain(broken.root, 4))).code).toBe(130);
    const changed = defaultsRepo();
    const defaults = PHASE_DEFAULTS as { sources: unknown; val_source: unknown };
    const saved = { base_lr: TRAIN_DEFAULTS.base_lr, sources: defaults.sources, val_source: defaults.val_source };
    // a later version's defaults
    TRAIN_DEFAULTS.base_lr = 1e-3;
    defaults.sources = { wiki: 0.5, roam: 0.5 };
    defaults.val_source = "roam";
    try {
      const resumed = await runIn(broken.root, pretrain);
      expect(resumed.code).toBe(0);
      expect(resumed.text).toContain(
        'pretrain: continues with the defaults this run started with: train_cfg.base_lr 0.0003 (the default is now 0.001), ' +
          'sources {"wiki":0.784,"roam":0.196,"primer":0.02} (the default is now {"wiki":0.5,"roam":0.5}), val_source "wiki" (the default is now "roam")',
      );
      // the counterfactual: a run under the new defaults is another run
      expect((await runIn(changed.root, pretrain)).code).toBe(0);
    } finally {
      Object.assign(TRAIN_DEFAULTS, { base_lr: saved.base_lr });
      Object.assign(defaults, { sources: saved.sources, val_source: saved.val_source });
    }
    for (const f of ["latest.pt", "best.pt", "step_0000010.pt"]) {
      expect(same(straight.root, broken.root, `checkpoints/${f}`)).toBe(true);
      expect(same(straight.root, changed.root, `checkpoints/${f}`)).toBe(false);
    }
  });
});

describe("pretrain alone, then the pipeline", () => {
  test("the pipeline moves the unfinished run to checkpoints/pretrain/, continues it, and ends as a straight pipeline", async () => {
    const make = () => {
      const repo = composeRepo();
      repo.writeConfig("pretrain.json", { ...json(repo.root, "configs/pretrain.json"), train_cfg: { ...(json(repo.root, "configs/pretrain.json").train_cfg as object), log_every: 1 } });
      return repo;
    };
    const straight = make();
    const split = make();
    expect((await runIn(straight.root, { phase: "pipeline", configPath: "configs/pipeline.json" })).code).toBe(0);
    expect((await runIn(split.root, { phase: "pretrain", configPath: "configs/pretrain.json" }, stopAtPretrain(split.root, 7))).code).toBe(130);
    const { code, text } = await runIn(split.root, { phase: "pipeline", configPath: "configs/pipeline.json" });
    expect(code).toBe(0);
    expect(text).toContain(
      "pipeline: moved the pretrain run (step 7 of 10: its pretrain phase continues it there) from checkpoints/ to checkpoints/pretrain/ by renaming 3 files " +
        "(step_0000005.pt, best.pt, latest.pt)", // a stop saves latest.pt alone
    );
    expect(text).toContain("pretrain: resumed from checkpoints/pretrain/latest.pt at step 7");
    expect(tree(split.root)).toEqual(PIPELINE_TREE);
    for (const f of PIPELINE_TREE.filter((f) => f.endsWith(".pt"))) expect(same(straight.root, split.root, `checkpoints/${f}`)).toBe(true);
  });
});
