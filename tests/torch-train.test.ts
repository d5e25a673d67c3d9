/**
 * interop/torch_train.py continues a `train` run under torchrun and comes back:
 *  - its sampler (interop/torch_data.py) draws the token ids `train` draws, pretrain and SFT,
 *    training and eval batches, over many steps;
 *  - `train` 20 steps -> torchrun with 2 gloo processes to 40 -> `train` to 60 logs the train
 *    and val losses of one uninterrupted `train` run at every logged step (1e-3 relative), and
 *    the rows the two ranks trained on are the global batches of `train` (pretrain, then SFT
 *    with the masked loss and masked eval);
 *  - a batch the processes cannot share evenly is refused with a clear message (exit 2).
 * Needs /usr/bin/python3 with torch (Debian python3-torch), like the parity tests.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { loadCheckpoint } from "../src/checkpoint/checkpoint.ts";
import { loadPhaseConfig } from "../src/config.ts";
import { SFTExampleDataset } from "../src/data/sft.ts";
import { openPhaseData } from "../src/train/phase-data.ts";
import { runTraining } from "../src/train/run.ts";
import type { StopSignal } from "../src/train/stop.ts";
import { captureStream, makeTinyRepo, TINY_TRAIN, type TinyRepo } from "./helpers/repo.ts";
import { INTEROP_DIR, PYTHON, makeTempDir, removeDir, torchVersion } from "./helpers/torch.ts";

type Phase = "pretrain" | "sft";

/**
 * 60 steps; `train` stops at 20, torchrun at 40 (checkpoints every 20 steps), each between two
 * log lines (log_every 6): each program continues the other's train-loss window.
 */
const ROUND_TRIP = { ...TINY_TRAIN, total_steps: 60, eval_every: 10, ckpt_every: 20, log_every: 6, warmup_steps: 5 };
const NPROC = 2;
/** torchrun starts 2 Python processes with torch: seconds, more on a loaded machine. */
const SLOW = 180_000;

interface Rec {
  phase: string;
  kind: "run" | "step" | "train" | "eval";
  step: number;
  train_loss: number | null;
  val_loss: number | null;
  version: string;
  target_tokens?: number | null;
}

function metrics(root: string): Rec[] {
  return readFileSync(join(root, "checkpoints/metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as Rec);
}

/** `train --phase <phase>` in-process; with `stopAfter`, stopped (as by Ctrl-C) once that step's eval is logged. */
async function train(root: string, phase: Phase, stopAfter?: number): Promise<string> {
  const stop: StopSignal = {
    get requested() {
      if (stopAfter === undefined || !existsSync(join(root, "checkpoints/metrics.jsonl"))) return null;
      return metrics(root).some((r) => r.phase === phase && r.kind === "eval" && r.step === stopAfter) ? "SIGINT" : null;
    },
  };
  const out = captureStream();
  const e = await runTraining({ phase, configPath: `configs/${phase}.json`, device: "cpu", resume: { kind: "auto" } }, { repoRoot: root, out, stop }).then(
    () => null,
    (err: Error) => err,
  );
  if (stopAfter === undefined) expect(e).toBeNull();
  else expect(e?.name).toBe("Interrupted");
  return out.text();
}

/** A TCP port on 127.0.0.1 that is free now (the system picks it; released before torchrun binds it). */
function freePort(): number {
  const server = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = server.port;
  server.stop(true);
  return port;
}

/** torchrun (interop/torchrun.py: torchrun with Debian's Python 3.11 fix) of torch_train.py in `root`.
 *  Its rendezvous port is one the system just handed out (torch 1.13's default 29500 and
 *  --standalone's 29400 are fixed, so two test runs on one machine would collide). */
function torchrun(root: string, args: string[], nproc = NPROC): { code: number; out: string; err: string } {
  const proc = Bun.spawnSync(
    [PYTHON, join(INTEROP_DIR, "torchrun.py"), "--master_addr", "127.0.0.1", "--master_port", String(freePort()), "--nproc_per_node", String(nproc), join(INTEROP_DIR, "torch_train.py"), ...args],
    { cwd: root, env: { ...process.env, OMP_NUM_THREADS: "1" }, stdout: "pipe", stderr: "pipe" },
  );
  return { code: proc.exitCode ?? -1, out: proc.stdout.toString(), err: proc.stderr.toString() };
}

/** The global batch (x, y) of each step from FIRST as trained, reassembled from the ranks' rows. */
function recordedBatches(prefix: string, B: number, T: number, steps: number): Int32Array[] {
  const rows = B / NPROC;
  const ranks = Array.from({ length: NPROC }, (_, r) => {
    const bytes = readFileSync(`${prefix}.rank${r}.bin`);
    expect(bytes.byteLength).toBe(steps * 2 * rows * T * 4);
    return new Int32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
  });
  const out: Int32Array[] = [];
  for (let s = 0; s < steps; s++) {
    for (const which of [0, 1]) {
      const global = new Int32Array(B * T);
      ranks.forEach((a, r) => global.set(a.subarray((2 * s + which) * rows * T, (2 * s + which + 1) * rows * T), r * rows * T));
      out.push(global);
    }
  }
  return out;
}

/** The .pt files of checkpoints/ and their bytes. */
function ptFiles(root: string): Record<string, string> {
  const dir = join(root, "checkpoints");
  return Object.fromEntries(readdirSync(dir).filter((f) => f.endsWith(".pt")).map((f) => [f, readFileSync(join(dir, f)).toString("base64")]));
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** `train` 20 -> torchrun 2 processes to 40 -> `train` 60, against one `train` run to 60. */
async function roundTrip(phase: Phase, roundTripRepo: TinyRepo, straightRepo: TinyRepo): Promise<void> {
  const straight = straightRepo.root;
  const root = roundTripRepo.root;
  await train(straight, phase);
  await train(root, phase, 20);
  expect(loadCheckpoint(join(root, "checkpoints/latest.pt")).step).toBe(20);

  const batchesDir = makeTempDir("torch-train-batches-");
  const prefix = join(batchesDir, "batches");
  const t = torchrun(root, ["--phase", phase, "--config", `configs/${phase}.json`, "--stop-after", "40", "--record-batches", prefix]);
  if (t.code !== 0) throw new Error(`torchrun exited ${t.code}:\n${t.out}\n${t.err}`);
  expect(t.out).toContain(`${phase}: resumed from checkpoints/latest.pt at step 20`);
  expect(t.out).toContain(`over ${NPROC} process(es)`);
  const fromTorch = loadCheckpoint(join(root, "checkpoints/step_0000040.pt"));
  expect(fromTorch.step).toBe(40);
  expect(fromTorch.opt?.step).toBe(40);
  // the file train would have written at step 40: the same configs, hyper-parameters, step and close weights
  const fromTrain = loadCheckpoint(join(straight, "checkpoints/step_0000040.pt"));
  expect([fromTorch.modelCfg, fromTorch.trainCfg, fromTorch.opt!.hparams]).toEqual([fromTrain.modelCfg, fromTrain.trainCfg, fromTrain.opt!.hparams]);
  expect(fromTorch.bestValLoss! / fromTrain.bestValLoss!).toBeCloseTo(1, 4);
  expect(maxAbsDiff(fromTorch.params, fromTrain.params)).toBeLessThan(1e-3);

  // The rows both ranks trained on are train's global batches of steps 20..39.
  const config = loadPhaseConfig(`configs/${phase}.json`, phase, root);
  const data = openPhaseData(config, root);
  const recorded = recordedBatches(prefix, config.train.B, config.model.T, 20);
  removeDir(batchesDir);
  for (let s = 20; s < 40; s++) {
    const b = data.trainBatch(s);
    expect([recorded[2 * (s - 20)], recorded[2 * (s - 20) + 1]]).toEqual([b.x, b.y]);
  }
  if (phase === "sft") expect(recorded.some((y, i) => i % 2 === 1 && y.includes(-100))).toBe(true); // masked targets

  const back = await train(root, phase);
  expect(back).toContain("resumed from checkpoints/latest.pt at step 40");

  // The run records say which program wrote what: train from 0, torch_train from 20, train again from 40.
  const runs = (rs: Rec[]) => rs.filter((r) => r.phase === phase && r.kind === "run").map((r) => `${r.step} ${r.version.split(" ")[0]}`);
  expect(runs(metrics(root))).toEqual(["0 train", "20 interop/torch_train.py", "40 train"]);
  expect(runs(metrics(straight))).toEqual(["0 train"]);
  const mine = metrics(root).filter((r) => r.phase === phase && r.kind !== "run");
  const ref = metrics(straight).filter((r) => r.phase === phase && r.kind !== "run");
  expect(mine.map((r) => `${r.kind} ${r.step}`)).toEqual(ref.map((r) => `${r.kind} ${r.step}`));
  expect(ref.filter((r) => r.kind === "train").map((r) => r.step)).toEqual([6, 12, 18, 24, 30, 36, 42, 48, 54, 60]);
  expect(ref.filter((r) => r.kind === "step").length).toBe(60);
  for (const [i, r] of ref.entries()) {
    const key = r.kind === "eval" ? "val_loss" : "train_loss";
    const a = mine[i]![key]!;
    const b = r[key]!;
    if (Math.abs(a - b) > 1e-3 * Math.abs(b)) throw new Error(`${phase} ${r.kind} step ${r.step}: ${key} ${a} after the round trip vs ${b} uninterrupted`);
  }
  // target tokens: counted alike by train and torch_train, and carried across both resumes
  const targets = (rs: typeof ref) => rs.filter((r) => r.kind === "train").map((r) => r.target_tokens);
  expect(targets(mine)).toEqual(targets(ref));
  expect(targets(ref).every((t) => typeof t === "number" && t > 0)).toBe(true);
  expect(loadCheckpoint(join(root, "checkpoints/latest.pt")).step).toBe(60);
}

beforeAll(() => {
  torchVersion(); // a clear error when python3 or torch is missing
});

describe("the sampler port", () => {
  const cases = [
    ["pretrain", "unset"],
    ["sft", "unset"],
    ["sft", "head"],
    ["sft", "cut_prompt"],
    ["sft", "drop"],
  ] as const;
  test.each(cases)("draws train's %s batches (long_examples %s; 200 steps and the eval batches)", (phase, rule) => {
    const longExamples = rule === "unset" ? undefined : rule;
    // with a rule: examples of every length around T, so the rules draw different rows
    const repo = makeTinyRepo({ sft: true, pretrain: { eval_batches: 5 }, sftTrain: { eval_batches: 5 }, sftLong: longExamples !== undefined, longExamples });
    const config = loadPhaseConfig(`configs/${phase}.json`, phase, repo.root);
    const data = openPhaseData(config, repo.root);
    const dir = makeTempDir("torch-data-");
    const out = join(dir, "batches.bin");
    const proc = Bun.spawnSync([PYTHON, join(INTEROP_DIR, "torch_data.py"), "--phase", phase, "--config", `configs/${phase}.json`, "--steps", "0:200", "--out", out], {
      cwd: repo.root,
      stderr: "pipe",
    });
    expect(proc.stderr.toString()).toBe("");
    const fromPython = new Int32Array(readFileSync(out).buffer.slice(0));
    removeDir(dir);
    const n = config.train.B * config.model.T;
    expect(fromPython.length).toBe((200 + 5) * 2 * n);
    const expected = new Int32Array(fromPython.length);
    for (let s = 0; s < 200; s++) {
      const b = data.trainBatch(s);
      expected.set(b.x, 2 * s * n);
      expected.set(b.y, (2 * s + 1) * n);
    }
    data.evalBatches.forEach((b, i) => {
      expected.set(b.x, (2 * (200 + i)) * n);
      expected.set(b.y, (2 * (200 + i) + 1) * n);
    });
    for (let k = 0; k < 205; k++) {
      const at = 2 * k * n;
      expect([k, fromPython.subarray(at, at + 2 * n)]).toEqual([k, expected.subarray(at, at + 2 * n)]);
    }
    if (phase === "sft") expect(expected.includes(-100)).toBe(true);
    if (longExamples !== undefined) {
      // the rule is in effect: some examples are cut (head, cut_prompt) or dropped (drop)
      const sftData = SFTExampleDataset.open(join(repo.root, "data/cache"), config.sources, "train", { B: 1, T: config.model.T, seed: 0, modelV: config.model.V, longExamples });
      const s = sftData.stats.dolly!;
      if (longExamples === "drop") expect(s.tooLong).toBeGreaterThan(0);
      else expect(s.cut).toBeGreaterThan(0);
    }
  }, SLOW);
});

describe("train -> torchrun (2 gloo processes) -> train", () => {
  test("pretrain: the same batches, and the losses of one uninterrupted run", async () => {
    const make = () => makeTinyRepo({ pretrain: ROUND_TRIP });
    await roundTrip("pretrain", make(), make());
  }, SLOW);

  test("SFT from pretrained weights: masked loss, masked eval batches", async () => {
    // the pretrained weights both runs start from (init_from: checkpoints/pretrain/best.pt)
    const pre = makeTinyRepo({ sft: true });
    await train(pre.root, "pretrain");
    const make = () => {
      const repo = makeTinyRepo({ sft: true, sftTrain: ROUND_TRIP, sftVal: "sft" });
      mkdirSync(join(repo.root, "checkpoints/pretrain"), { recursive: true });
      copyFileSync(join(pre.root, "checkpoints/best.pt"), join(repo.root, "checkpoints/pretrain/best.pt"));
      return repo;
    };
    await roundTrip("sft", make(), make());
  }, SLOW);
});

/**
 * What the workers wrote to stderr: torchrun's own report of a failed worker (its exit code, and
 * a traceback of the launcher itself) follows it. One line from rank 0, no traceback.
 */
function workerErrors(stderr: string): string {
  const text = stderr.slice(0, stderr.search(/^ERROR:torch\.distributed/m));
  expect(text).not.toContain("Traceback");
  expect(text.trim().split("\n").length).toBe(1);
  return text;
}

describe("bad input and divergence", () => {
  test("a batch that the processes cannot share evenly: exit 2, a clear message, nothing written", () => {
    const repo = makeTinyRepo({ pretrain: { B: 3 } });
    const t = torchrun(repo.root, ["--phase", "pretrain", "--config", "configs/pretrain.json"]);
    expect(t.code).not.toBe(0);
    expect(workerErrors(t.err)).toMatch(/^torch_train: \S+configs\/pretrain.json: train_cfg.B=3 is not divisible by the 2 processes; .*choose N dividing 3/);
    expect(t.err).toContain("exitcode  : 2");
    expect(existsSync(join(repo.root, "checkpoints"))).toBe(false);
  }, SLOW);

  test("divergence: the same guard as train (exit 1, the message, no checkpoint of unsound weights)", async () => {
    const repo = makeTinyRepo({ pretrain: { total_steps: 4, ckpt_every: 2, eval_every: 2 } });
    await train(repo.root, "pretrain");
    const before = ptFiles(repo.root);
    // an absurd learning rate from step 4 on: huge but finite weights whose loss is NaN
    repo.writeConfig("pretrain.json", {
      ...JSON.parse(readFileSync(join(repo.root, "configs/pretrain.json"), "utf8")),
      train_cfg: { ...TINY_TRAIN, total_steps: 40, warmup_steps: 0, ckpt_every: 2, eval_every: 100, base_lr: 1e30, min_lr: 1e29 },
    });
    const proc = Bun.spawnSync([PYTHON, join(INTEROP_DIR, "torch_train.py"), "--phase", "pretrain", "--config", "configs/pretrain.json"], {
      cwd: repo.root,
      env: { ...process.env, OMP_NUM_THREADS: "1" },
      stdout: "pipe",
      stderr: "pipe",
    });
    expect(proc.exitCode).toBe(1);
    expect(ptFiles(repo.root)).toEqual(before);
    // train, on the same files, stops at the same step with the same words
    const diverged = await runTraining(
      { phase: "pretrain", configPath: "configs/pretrain.json", device: "cpu", resume: { kind: "auto" } },
      { repoRoot: repo.root, out: captureStream(), stop: { requested: null } },
    ).then(
      () => null,
      (e: Error) => e,
    );
    expect(diverged?.message).toBe(
      "training diverged at step 6: the loss of the weights on a val batch is NaN; no checkpoint was written at this step, " +
        "checkpoints/latest.pt (step 4) is intact. Lower base_lr (or grad_clip) in the config and resume.",
    );
    expect(proc.stderr.toString()).toBe(`torch_train: ${diverged!.message}\n`);
  }, SLOW);

  test("a --resume file that is not a checkpoint: exit 2, naming it, nothing written", () => {
    const repo = makeTinyRepo();
    const t = torchrun(repo.root, ["--phase", "pretrain", "--config", "configs/pretrain.json", "--resume", "configs/model.json"], 1);
    expect(workerErrors(t.err)).toMatch(/^torch_train: \S+configs\/model.json: not a readable checkpoint/);
    expect(t.err).toContain("exitcode  : 2");
    expect(existsSync(join(repo.root, "checkpoints"))).toBe(false);
  }, SLOW);
});
