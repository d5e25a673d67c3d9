/**
 * A GPT-2-small training run through the built executable (issue 22), end to end:
 *
 *   bun scripts/gpt2-small-run.ts [--steps 4] [--keep]      (after `npm run build`)
 *
 * In a throwaway repo: synthetic token caches of V = 50257 (random ids, the project's own
 * cache writer), the GPT-2-small model (V=50257 T=1024 C=768 L=12 H=12 d_ff=3072, 124M
 * parameters) at B = 1, a checkpoint every 2 steps. Then
 *  1. an uninterrupted `dist/train --phase pretrain` run to --steps;
 *  2. the same command in a second repo, SIGKILLed right after its first checkpoint (in
 *     the middle of the next step), and run again: it must resume and end with every
 *     checkpoint file equal to the uninterrupted run's to the byte, and the same
 *     metrics.jsonl (less its wall-clock fields);
 *  3. latest.pt through interop/torch_checkpoint_check.py: torch.load, a strict
 *     load_state_dict into interop/reference_gpt.py's GPT, its loss on a fresh batch and
 *     one AdamW step from the saved optimizer state, against the native model loaded from
 *     the same file: the same loss, step loss and gradient norm (to float rounding).
 * Prints what it measured (step times, peak RSS of each run) and exits 1 on a mismatch.
 * Slow (minutes: a step is seconds, each checkpoint 1.5 GB): not part of `npm test`.
 * Needs python3 with torch and about 12 GB of free disk in the temp folder.
 */
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { NativeModel } from "../src/backend/native.ts";
import { loadCheckpoint } from "../src/checkpoint/checkpoint.ts";
import { CacheWriter } from "../src/prepare/writer.ts";
import { readMetrics } from "../src/train/metrics.ts";
import { Rng } from "../src/util/random.ts";
import { SHAPES } from "../bench/shapes.ts";

const ROOT = join(import.meta.dir, "..");
const EXE = join(ROOT, "dist", "train");
const PYTHON = process.env.BENCH_PYTHON ?? "/usr/bin/python3";

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1]! : fallback;
}
const STEPS = Number(arg("steps", "4"));
const KEEP = process.argv.includes("--keep");
const CKPT_EVERY = 2;
if (!Number.isInteger(STEPS) || STEPS < 2 * CKPT_EVERY) throw new Error(`--steps: expected an integer >= ${2 * CKPT_EVERY}`);
if (!existsSync(EXE)) throw new Error(`${EXE} not found: build it with "npm run build"`);

const MODEL = SHAPES.S4!.cfg;
const TRAIN = {
  seed: 1, B: 1, total_steps: STEPS, eval_every: CKPT_EVERY, eval_batches: 1, ckpt_every: CKPT_EVERY, log_every: 1,
  base_lr: 3e-4, warmup_steps: 2, min_lr: 3e-5, grad_clip: 1.0, accum_steps: 1, weight_decay: 0.1,
  beta1: 0.9, beta2: 0.95, eps: 1e-8, max_nonfinite_steps: 3,
};

let failed = false;
function check(ok: boolean, what: string): void {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
  if (!ok) failed = true;
}

/** A repo with configs and random caches of V ids (the same in every repo: seeded). */
function makeRepo(parent: string, name: string): string {
  const root = join(parent, name);
  mkdirSync(join(root, "configs"), { recursive: true });
  const rng = new Rng(22, 50257);
  for (const [source, n] of [["wiki", 1 << 20], ["roam", 1 << 18], ["primer", 1 << 16]] as const) {
    for (const [split, len] of [["train", n], ["val", 1 << 15]] as const) {
      const w = new CacheWriter(join(root, "data/cache/streams", `${source}_${split}.bin`), {
        kind: "streams", source, split, vocabSize: MODEL.V, tokenizer: "synthetic-gpt2-small",
      });
      const ids = new Array<number>(len);
      for (let i = 0; i < len; i++) ids[i] = rng.below(MODEL.V);
      w.append(ids);
      w.close();
    }
  }
  writeFileSync(join(root, "configs/model.json"), JSON.stringify(MODEL, null, 2));
  writeFileSync(join(root, "configs/pretrain.json"), JSON.stringify({
    model_cfg_path: "configs/model.json", train_cfg: TRAIN, sources: { wiki: 0.784, roam: 0.196, primer: 0.02 }, val_source: "wiki",
  }, null, 2));
  return root;
}

const ARGS = ["--phase", "pretrain", "--config", "configs/pretrain.json", "--device", "cpu"];

interface RunResult { code: number | null; signal: string | null; out: string; maxRssMB: number; seconds: number }

/** dist/train in root; with killAfter, SIGKILLed as soon as a line matches it. */
async function train(root: string, killAfter?: RegExp): Promise<RunResult> {
  const t0 = performance.now();
  const proc = Bun.spawn([EXE, ...ARGS], { cwd: root, stdout: "pipe", stderr: "pipe" });
  let out = "";
  const decoder = new TextDecoder();
  for await (const chunk of proc.stdout as ReadableStream<Uint8Array>) {
    const text = decoder.decode(chunk, { stream: true });
    out += text;
    process.stdout.write(text.replace(/^/gm, "    "));
    if (killAfter && killAfter.test(out)) {
      proc.kill("SIGKILL");
      break;
    }
  }
  await proc.exited;
  out += await new Response(proc.stderr as ReadableStream<Uint8Array>).text();
  const usage = proc.resourceUsage();
  return {
    code: proc.exitCode, signal: proc.signalCode === null ? null : String(proc.signalCode), out, seconds: (performance.now() - t0) / 1e3,
    maxRssMB: usage ? usage.maxRSS / 2 ** 20 : NaN,
  };
}

/** Checkpoint files (final names) under dir, relative paths. */
function checkpoints(dir: string, sub = ""): string[] {
  const here = join(dir, sub);
  if (!existsSync(here)) return [];
  const out: string[] = [];
  for (const e of readdirSync(here, { withFileTypes: true })) {
    const rel = join(sub, e.name);
    if (e.isDirectory()) out.push(...checkpoints(dir, rel));
    else if (/^[^.].*\.pt$/.test(e.name)) out.push(rel);
  }
  return out.sort();
}

/** Whether two files hold the same bytes (read 64 MB at a time: they are 1.5 GB). */
function sameBytes(a: string, b: string): boolean {
  if (statSync(a).size !== statSync(b).size) return false;
  const fa = openSync(a, "r"), fb = openSync(b, "r");
  const ba = Buffer.alloc(64 << 20), bb = Buffer.alloc(64 << 20);
  try {
    for (;;) {
      const na = readSync(fa, ba, 0, ba.length, null);
      const nb = readSync(fb, bb, 0, bb.length, null);
      if (na !== nb || !ba.subarray(0, na).equals(bb.subarray(0, nb))) return false;
      if (na === 0) return true;
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

const metricsLessClock = (root: string) =>
  readMetrics(join(root, "checkpoints/metrics.jsonl")).map(({ time: _t, wall_time_s: _w, tokens_per_s: _r, ...rest }) => JSON.stringify(rest));

const parent = mkdtempSync(join(tmpdir(), "gpt2-small-run-"));
try {
  console.log(`GPT-2 small (${JSON.stringify(MODEL)}), B=1, ${STEPS} steps, a checkpoint every ${CKPT_EVERY}, in ${parent}`);
  const refRoot = makeRepo(parent, "reference");
  const killRoot = makeRepo(parent, "killed");

  console.log("1. uninterrupted run");
  const ref = await train(refRoot);
  check(ref.code === 0, `uninterrupted run exits 0 (${ref.code}), ${ref.seconds.toFixed(0)} s, peak RSS ${ref.maxRssMB.toFixed(0)} MB`);

  console.log(`2. run SIGKILLed after its step-${CKPT_EVERY} checkpoint, then the same command again`);
  const killed = await train(killRoot, new RegExp(`checkpoint step\\s+${CKPT_EVERY}/`));
  check(killed.signal === "SIGKILL", `killed by SIGKILL (${killed.signal ?? killed.code})`);
  const resumed = await train(killRoot);
  check(resumed.code === 0 && /resumed from/.test(resumed.out), `resumed run exits 0 (${resumed.code}) and says it resumed, peak RSS ${resumed.maxRssMB.toFixed(0)} MB`);
  const refDir = join(refRoot, "checkpoints"), killDir = join(killRoot, "checkpoints");
  const names = checkpoints(refDir);
  check(names.length > 0 && JSON.stringify(checkpoints(killDir)) === JSON.stringify(names), `the same checkpoint files: ${names.join(", ")}`);
  for (const name of names) check(existsSync(join(killDir, name)) && sameBytes(join(refDir, name), join(killDir, name)), `${name} byte-identical to the uninterrupted run's`);
  const metricsSame = JSON.stringify(metricsLessClock(refRoot)) === JSON.stringify(metricsLessClock(killRoot));
  check(metricsSame, "metrics.jsonl the same (less wall-clock fields)");

  console.log("3. latest.pt in PyTorch (interop/reference_gpt.py) against the native model");
  const latest = join(refDir, "latest.pt");
  const rng = new Rng(99);
  const n = MODEL.T;
  const batch = () => Array.from({ length: n }, () => rng.below(MODEL.V));
  const lr = 3e-4;
  const b = { B: 1, x: batch(), y: batch(), x2: batch(), y2: batch(), lr, grad_clip: TRAIN.grad_clip };
  const checkDir = join(parent, "torch-check");
  mkdirSync(checkDir);
  writeFileSync(join(checkDir, "batch.json"), JSON.stringify(b));
  const py = Bun.spawnSync([PYTHON, join(ROOT, "interop/torch_checkpoint_check.py"), "check", latest, checkDir], { stdout: "pipe", stderr: "pipe" });
  if (py.exitCode !== 0) throw new Error(`torch_checkpoint_check.py failed: ${py.stderr.toString()}`);
  const torch = JSON.parse(readFileSync(join(checkDir, "check.json"), "utf8")) as { loss: number; step_loss: number; step_grad_norm: number; grad_norm_f64: number; step: number; tied: boolean };

  const ckpt = loadCheckpoint(latest);
  const model = NativeModel.open(MODEL, 1, "cpu");
  let ours: { loss: number; stepLoss: number; norm: number };
  try {
    model.setParams(ckpt.params);
    model.setOptState(ckpt.opt!.m, ckpt.opt!.v, ckpt.opt!.step);
    const loss = model.evalLoss(Int32Array.from(b.x), Int32Array.from(b.y));
    const step = model.trainStep(Int32Array.from(b.x2), Int32Array.from(b.y2), {
      lr, weightDecay: TRAIN.weight_decay, beta1: TRAIN.beta1, beta2: TRAIN.beta2, eps: TRAIN.eps, gradClip: TRAIN.grad_clip,
    });
    ours = { loss, stepLoss: step.loss, norm: step.gradNorm };
  } finally {
    model.close();
  }
  const rel = (a: number, t: number) => Math.abs(a - t) / Math.abs(t);
  check(torch.step === STEPS && torch.tied, `torch.load: step ${torch.step}, lm_head tied to wte: ${torch.tied}`);
  check(rel(ours.loss, torch.loss) < 1e-5, `eval loss: PyTorch ${torch.loss.toFixed(6)}, ours ${ours.loss.toFixed(6)} (rel ${rel(ours.loss, torch.loss).toExponential(1)})`);
  check(rel(ours.stepLoss, torch.step_loss) < 1e-5, `AdamW step from the saved state, loss: PyTorch ${torch.step_loss.toFixed(6)}, ours ${ours.stepLoss.toFixed(6)}`);
  check(
    rel(ours.norm, torch.grad_norm_f64) < 1e-5,
    `its gradient norm: PyTorch ${torch.grad_norm_f64.toFixed(6)} (summed in float64; clip_grad_norm_ said ${torch.step_grad_norm.toFixed(6)}), ours ${ours.norm.toFixed(6)} (rel ${rel(ours.norm, torch.grad_norm_f64).toExponential(1)})`,
  );
  console.log(`${relative(ROOT, EXE)} step lines of the uninterrupted run:`);
  for (const line of ref.out.split("\n").filter((l) => /step\s+\d+\/|val loss|checkpoint/.test(l))) console.log(`    ${line.trim()}`);
} finally {
  if (KEEP) console.log(`kept ${parent}`);
  else rmSync(parent, { recursive: true, force: true });
}
console.log(failed ? "FAILED" : "all checks passed");
process.exit(failed ? 1 : 0);
