/**
 * `--phase pipeline` and the phase boundary: where each phase's checkpoints go, SFT starting
 * from pretrain's best weights with a fresh optimizer (checked by redoing SFT's first step
 * here), `--phase sft` with init_from, checkpoints of another phase or model refused, and
 * metrics.jsonl / loss.svg after an interrupted and resumed pipeline.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";
import { NativeModel } from "../src/backend/native.ts";
import { loadCheckpoint, type Checkpoint } from "../src/checkpoint/checkpoint.ts";
import { loadPhaseConfig } from "../src/config.ts";
import { exitCodeOf } from "../src/errors.ts";
import { evaluate, hparamsOf } from "../src/train/loop.ts";
import { openPhaseData } from "../src/train/phase-data.ts";
import { runTraining, type RunRequest } from "../src/train/run.ts";
import { learningRate } from "../src/train/schedule.ts";
import type { StopSignal } from "../src/train/stop.ts";
import { captureStream, makeTinyRepo, TINY_MODEL, type TinyRepo } from "./helpers/repo.ts";


const never: StopSignal = { requested: null };

async function run(root: string, req: Partial<RunRequest> & Pick<RunRequest, "phase" | "configPath">, stop: StopSignal = never) {
  const out = captureStream();
  const code = await runTraining({ device: "cpu", resume: { kind: "auto" }, ...req }, { repoRoot: root, out, stop });
  return { code, text: out.text() };
}

/** The error a refused run throws; it must be an input error (exit 2). */
async function refused(root: string, req: Partial<RunRequest> & Pick<RunRequest, "phase" | "configPath">): Promise<string> {
  const e = await run(root, req).then(
    () => null,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(Error);
  expect(exitCodeOf(e)).toBe(2);
  return (e as Error).message;
}

function ckpt(root: string, rel: string): Checkpoint {
  return loadCheckpoint(join(root, rel));
}

function bytes(a: Float32Array): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

function json(root: string, rel: string): Record<string, unknown> {
  return JSON.parse(readFileSync(join(root, rel), "utf8")) as Record<string, unknown>;
}

interface Rec {
  phase: string;
  kind: string;
  step: number;
  val_loss: number | null;
}

function metrics(root: string): Rec[] {
  return readFileSync(join(root, "checkpoints/metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as Rec);
}

/** A stop request once metrics.jsonl has the train record of (phase, step): needs log_every 1. */
function stopAt(root: string, phase: string, step: number): StopSignal {
  return {
    get requested() {
      const file = join(root, "checkpoints/metrics.jsonl");
      if (!existsSync(file)) return null;
      return metrics(root).some((r) => r.phase === phase && r.kind === "train" && r.step === step) ? "SIGINT" : null;
    },
  };
}

/** Redoes SFT's first update by hand: the given weights, the given optimizer state, SFT's batch 0. */
function firstSftStep(repo: TinyRepo, params: Float32Array, opt: Checkpoint["opt"]): { params: Float32Array; opt: ReturnType<NativeModel["getOptState"]> } {
  const config = loadPhaseConfig("configs/sft.json", "sft", repo.root);
  const data = openPhaseData(config, repo.root);
  const model = NativeModel.open(config.model, config.train.B, "cpu");
  try {
    model.setParams(params);
    if (opt) model.setOptState(opt.m, opt.v, opt.step);
    else model.setOptState(null, null, 0);
    const { x, y } = data.trainBatch(0);
    const r = model.trainStep(x, y, hparamsOf(config.train, learningRate(0, config.train)));
    expect(r.applied).toBe(true);
    return { params: model.getParams(), opt: model.getOptState() };
  } finally {
    model.close();
  }
}

function sftEvalLoss(repo: TinyRepo, params: Float32Array): number {
  const config = loadPhaseConfig("configs/sft.json", "sft", repo.root);
  const data = openPhaseData(config, repo.root);
  const model = NativeModel.open(config.model, config.train.B, "cpu");
  try {
    model.setParams(params);
    return evaluate(model, data.evalBatches);
  } finally {
    model.close();
  }
}

describe("--phase pipeline", () => {
  const repo = makeTinyRepo({ sft: true, sftTrain: { ckpt_every: 1, total_steps: 6, eval_every: 3 } });
  const done = run(repo.root, { phase: "pipeline", configPath: "configs/pipeline.json" });

  test("pretrain checkpoints under checkpoints/pretrain/, SFT's in checkpoints/; best.pt is the SFT model and loadable", async () => {
    const { code, text } = await done;
    expect(code).toBe(0);
    expect(readdirSync(join(repo.root, "checkpoints/pretrain")).sort()).toEqual(["best.pt", "latest.pt", "step_0000005.pt", "step_0000010.pt"]);
    for (const f of readdirSync(join(repo.root, "checkpoints/pretrain"))) {
      expect(ckpt(repo.root, `checkpoints/pretrain/${f}`).trainCfg).toEqual(json(repo.root, "configs/pretrain.json"));
    }
    const best = ckpt(repo.root, "checkpoints/best.pt");
    expect(best.trainCfg).toEqual(json(repo.root, "configs/sft.json"));
    expect(best.modelCfg as unknown).toEqual(json(repo.root, "configs/model.json"));
    expect(best.params.length).toBeGreaterThan(0);
    expect(best.bestValLoss).not.toBeNull();
    // loadable: a native model takes its weights and evaluates to its recorded best val loss
    expect(sftEvalLoss(repo, best.params)).toBeCloseTo(best.bestValLoss!, 5);
    expect(ckpt(repo.root, "checkpoints/latest.pt").trainCfg).toEqual(json(repo.root, "configs/sft.json"));
    expect(text).toContain("the SFT model is checkpoints/best.pt");
  });

  test("SFT starts from pretrain best.pt's weights with a fresh optimizer (its first step redone by hand)", async () => {
    await done;
    const preBest = ckpt(repo.root, "checkpoints/pretrain/best.pt");
    const sft1 = ckpt(repo.root, "checkpoints/step_0000001.pt");
    const expected = firstSftStep(repo, preBest.params, null);
    expect(bytes(sft1.params).equals(bytes(expected.params))).toBe(true);
    expect(bytes(sft1.opt!.m).equals(bytes(expected.opt.m))).toBe(true);
    expect(bytes(sft1.opt!.v).equals(bytes(expected.opt.v))).toBe(true);
    expect(sft1.opt!.step).toBe(1);
    // the counterfactual (pretrain's optimizer carried over) is distinguishable
    const carried = firstSftStep(repo, preBest.params, preBest.opt);
    expect(bytes(sft1.params).equals(bytes(carried.params))).toBe(false);
    // SFT's val loss before training is pretrain best's on the SFT eval batches
    const first = metrics(repo.root).find((r) => r.phase === "sft" && r.kind === "eval" && r.step === 0)!;
    expect(first.val_loss!).toBeCloseTo(sftEvalLoss(repo, preBest.params), 6);
  });

  test("the optimizer step counts SFT's steps only; SFT's steps start at 0", async () => {
    await done;
    const latest = ckpt(repo.root, "checkpoints/latest.pt");
    expect(latest.step).toBe(6);
    expect(latest.opt!.step).toBe(6);
    expect(ckpt(repo.root, "checkpoints/pretrain/latest.pt").opt!.step).toBe(10);
    expect(existsSync(join(repo.root, "checkpoints/step_0000007.pt"))).toBe(false);
  });

  test("a finished pipeline run again does nothing and changes nothing", async () => {
    await done;
    const before = readFileSync(join(repo.root, "checkpoints/best.pt"));
    const again = await run(repo.root, { phase: "pipeline", configPath: "configs/pipeline.json" });
    expect(again.code).toBe(0);
    expect(again.text).toContain("pretrain: already finished");
    expect(again.text).toContain("sft: already finished");
    expect(readFileSync(join(repo.root, "checkpoints/best.pt")).equals(before)).toBe(true);
  });
});

describe("a pipeline whose pretrain starts over", () => {
  test("starts SFT over too (an older SFT checkpoint is stale) and ends as a fresh pipeline", async () => {
    const opts = { sft: true, sftTrain: { total_steps: 6, eval_every: 3, ckpt_every: 3 } };
    const fresh = makeTinyRepo(opts);
    expect((await run(fresh.root, { phase: "pipeline", configPath: "configs/pipeline.json" })).code).toBe(0);

    const redo = makeTinyRepo(opts);
    expect((await run(redo.root, { phase: "pipeline", configPath: "configs/pipeline.json" })).code).toBe(0);
    // the user deletes the pretrain checkpoints to start over
    rmSync(join(redo.root, "checkpoints/pretrain"), { recursive: true });
    const again = await run(redo.root, { phase: "pipeline", configPath: "configs/pipeline.json" });
    expect(again.code).toBe(0);
    expect(again.text).toContain("pretrain started over, so SFT starts over");
    expect(again.text).not.toContain("sft: already finished");
    for (const f of ["checkpoints/best.pt", "checkpoints/latest.pt", "checkpoints/pretrain/best.pt"]) {
      expect(readFileSync(join(redo.root, f)).equals(readFileSync(join(fresh.root, f)))).toBe(true);
    }
  });
});

describe("--phase sft with init_from", () => {
  test("starts from the named pretrain checkpoint (not best.pt), fresh optimizer", async () => {
    const repo = makeTinyRepo({ sft: true });
    expect((await run(repo.root, { phase: "pretrain", configPath: "configs/pretrain.json" })).code).toBe(0);
    renameSync(join(repo.root, "checkpoints"), join(repo.root, "pre"));
    const sft = json(repo.root, "configs/sft.json");
    repo.writeConfig("sft.json", { ...sft, init_from: "pre/step_0000005.pt" });
    const { code, text } = await run(repo.root, { phase: "sft", configPath: "configs/sft.json" });
    expect(code).toBe(0);
    expect(text).toContain("weights from pre/step_0000005.pt (step 5), fresh optimizer");
    const init = ckpt(repo.root, "pre/step_0000005.pt");
    const first = metrics(repo.root).find((r) => r.phase === "sft" && r.kind === "eval" && r.step === 0)!;
    expect(first.val_loss!).toBeCloseTo(sftEvalLoss(repo, init.params), 6);
    expect(Math.abs(first.val_loss! - sftEvalLoss(repo, ckpt(repo.root, "pre/best.pt").params))).toBeGreaterThan(1e-4);
    const latest = ckpt(repo.root, "checkpoints/latest.pt");
    expect(latest.trainCfg).toEqual({ ...sft, init_from: "pre/step_0000005.pt" });
    expect(latest.opt!.step).toBe(10);
  });

  test("init_from that does not exist, or holds another model shape: exit 2, nothing written", async () => {
    const repo = makeTinyRepo({ sft: true });
    const sft = json(repo.root, "configs/sft.json");
    repo.writeConfig("sft.json", { ...sft, init_from: "pre/none.pt" });
    const missing = await refused(repo.root, { phase: "sft", configPath: "configs/sft.json" });
    expect(missing).toContain(join(repo.root, "pre/none.pt"));
    expect(missing).toContain("init_from");
    expect(existsSync(join(repo.root, "checkpoints"))).toBe(false);

    const other = makeTinyRepo({ model: { C: 64, d_ff: 128 } });
    expect((await run(other.root, { phase: "pretrain", configPath: "configs/pretrain.json" })).code).toBe(0);
    repo.writeConfig("sft.json", { ...sft, init_from: join(other.root, "checkpoints/best.pt") });
    const shape = await refused(repo.root, { phase: "sft", configPath: "configs/sft.json" });
    expect(shape).toContain("C: 64 vs 32");
    expect(shape).toContain("d_ff: 128 vs 64");
    expect(shape).not.toContain("V:");
    expect(existsSync(join(repo.root, "checkpoints"))).toBe(false);
  });
});

describe("checkpoints of another phase or another model are refused", () => {
  test("an sft run with an unfinished pretrain run in checkpoints/ exits 2, says how to go on, and changes nothing", async () => {
    const repo = makeTinyRepo({ sft: true, pretrain: { log_every: 1 } });
    const stopped = await run(repo.root, { phase: "pretrain", configPath: "configs/pretrain.json" }, stopAt(repo.root, "pretrain", 7)).catch((e: Error) => e);
    expect((stopped as Error).name).toBe("Interrupted");
    const listing = readdirSync(join(repo.root, "checkpoints")).sort();
    const latest = readFileSync(join(repo.root, "checkpoints/latest.pt"));
    for (const resume of [{ kind: "auto" } as const, { kind: "none" } as const]) {
      const message = await refused(repo.root, { phase: "sft", configPath: "configs/sft.json", resume });
      expect(message).toContain("checkpoints/latest.pt is a pretrain run at step 7 of its total_steps 10: not finished");
      expect(message).toContain("train --phase pretrain --config configs/pretrain.json (it resumes at step 7)");
      expect(message).toContain("mkdir -p checkpoints/pretrain && mv checkpoints/step_*.pt checkpoints/best.pt checkpoints/latest.pt checkpoints/pretrain/");
    }
    expect(readdirSync(join(repo.root, "checkpoints")).sort()).toEqual(listing);
    expect(readFileSync(join(repo.root, "checkpoints/latest.pt")).equals(latest)).toBe(true);
  });

  test("auto-resume: a pretrain run with an sft latest.pt exits 2; so does --resume of the other phase's file", async () => {
    const repo = makeTinyRepo({ sft: true });
    const sft = json(repo.root, "configs/sft.json");
    repo.writeConfig("sft.json", { ...sft, init_from: "none" });
    expect((await run(repo.root, { phase: "sft", configPath: "configs/sft.json" })).code).toBe(0);
    expect(await refused(repo.root, { phase: "pretrain", configPath: "configs/pretrain.json" })).toContain("is an sft checkpoint, but this is the pretrain phase");
    const explicit = await refused(repo.root, { phase: "pretrain", configPath: "configs/pretrain.json", resume: { kind: "path", path: "checkpoints/step_0000005.pt" } });
    expect(explicit).toContain("step_0000005.pt");
    expect(explicit).toContain("sft checkpoint");
  });

  test("a checkpoint of another model shape is refused naming the differing keys (auto and --resume)", async () => {
    const repo = makeTinyRepo();
    expect((await run(repo.root, { phase: "pretrain", configPath: "configs/pretrain.json" })).code).toBe(0);
    const latest = readFileSync(join(repo.root, "checkpoints/latest.pt"));
    repo.writeConfig("model.json", { ...TINY_MODEL, C: 48, H: 3, L: 3 });
    for (const resume of [{ kind: "auto" } as const, { kind: "path", path: "checkpoints/step_0000005.pt" } as const]) {
      const message = await refused(repo.root, { phase: "pretrain", configPath: "configs/pretrain.json", resume });
      for (const diff of ["C: 32 vs 48", "L: 2 vs 3", "H: 2 vs 3"]) expect(message).toContain(diff);
      for (const same of ["V:", "T:", "d_ff:"]) expect(message).not.toContain(same);
    }
    expect(readFileSync(join(repo.root, "checkpoints/latest.pt")).equals(latest)).toBe(true);
    // --no-resume starts fresh with the new shape
    expect((await run(repo.root, { phase: "pretrain", configPath: "configs/pretrain.json", resume: { kind: "none" } })).code).toBe(0);
    expect(ckpt(repo.root, "checkpoints/latest.pt").modelCfg.C).toBe(48);
  });

});

describe("interrupted and resumed pipeline", () => {
  const opts = { sft: true, pretrain: { log_every: 1 }, sftTrain: { log_every: 1 } };
  const straight = makeTinyRepo(opts);
  const broken = makeTinyRepo(opts);
  const runs = (async () => {
    expect((await run(straight.root, { phase: "pipeline", configPath: "configs/pipeline.json" })).code).toBe(0);
    const interrupted: string[] = [];
    for (const [phase, step] of [["pretrain", 7], ["sft", 3]] as const) {
      const e = await run(broken.root, { phase: "pipeline", configPath: "configs/pipeline.json" }, stopAt(broken.root, phase, step)).catch((err: Error) => err);
      expect(e).toBeInstanceOf(Error);
      interrupted.push((e as Error).name);
    }
    const last = await run(broken.root, { phase: "pipeline", configPath: "configs/pipeline.json" });
    return { interrupted, last };
  })();

  test("every step is in metrics.jsonl exactly once, evals at 0 and every eval_every, per phase", async () => {
    const { interrupted, last } = await runs;
    expect(interrupted).toEqual(["Interrupted", "Interrupted"]);
    expect(last.code).toBe(0);
    expect(last.text).toContain("pretrain: already finished");
    expect(last.text).toContain("resumed from checkpoints/latest.pt at step 3");
    const recs = metrics(broken.root);
    const steps = (phase: string, kind: string) => recs.filter((r) => r.phase === phase && r.kind === kind).map((r) => r.step);
    const oneToTen = Array.from({ length: 10 }, (_, i) => i + 1);
    for (const phase of ["pretrain", "sft"]) {
      expect(steps(phase, "train")).toEqual(oneToTen);
      expect(steps(phase, "eval")).toEqual([0, 5, 10]);
    }
    // pretrain's records first, then sft's
    const firstSft = recs.findIndex((r) => r.phase === "sft");
    expect(recs.slice(firstSft).every((r) => r.phase === "sft")).toBe(true);
    // the same val losses as the uninterrupted pipeline, and the same final SFT model, to the byte
    const vals = (rs: Rec[]) => rs.filter((r) => r.kind === "eval").map((r) => `${r.phase}:${r.step}:${r.val_loss}`);
    expect(vals(recs)).toEqual(vals(metrics(straight.root)));
    for (const f of ["checkpoints/best.pt", "checkpoints/latest.pt", "checkpoints/pretrain/best.pt"]) {
      expect(readFileSync(join(broken.root, f)).equals(readFileSync(join(straight.root, f)))).toBe(true);
    }
  });

  test("loss.svg: well-formed SVG with both phases", async () => {
    await runs;
    const svg = readFileSync(join(broken.root, "checkpoints/loss.svg"), "utf8");
    expect(svg).toStartWith('<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg"');
    expect(svg.trimEnd()).toEndWith("</svg>");
    // tags balance (no XML parser in the deps: a stack over the tags is enough here)
    const stack: string[] = [];
    for (const m of svg.replace(/<\?xml[^>]*\?>/, "").matchAll(/<(\/?)([a-zA-Z][\w-]*)[^>]*?(\/?)>/g)) {
      if (m[1]) expect(stack.pop()).toBe(m[2]);
      else if (!m[3]) stack.push(m[2]!);
    }
    expect(stack).toEqual([]);
    expect(svg).not.toContain("NaN");
    const labels = [...svg.matchAll(/class="phase-label"[^>]*>([^<]*)</g)].map((m) => m[1]);
    expect(labels).toEqual(["pretrain", "SFT (from step 10)"]);
    expect(svg.match(/class="train"/g)?.length).toBe(2); // one train curve per phase
    expect(svg).toContain('class="divider"');
  });

  test("a pretrain restarted fresh in a pipeline drops the stale sft records", async () => {
    await runs;
    rmSync(join(broken.root, "checkpoints/pretrain"), { recursive: true });
    rmSync(join(broken.root, "checkpoints/latest.pt"));
    const stop = stopAt(broken.root, "pretrain", 2);
    const e = await run(broken.root, { phase: "pipeline", configPath: "configs/pipeline.json" }, stop).catch((err: Error) => err);
    expect((e as Error).name).toBe("Interrupted");
    const recs = metrics(broken.root);
    expect(recs.every((r) => r.phase === "pretrain" && r.step <= 2)).toBe(true);
  });
});
