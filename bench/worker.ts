/**
 * One benchmark measurement, run by bench/bench.ts in its own process so that the
 * parent can read this process's peak RSS. Usage: bun bench/worker.ts '<job json>'.
 * Prints one JSON line with the result on stdout.
 *
 * Jobs:
 *  {"kind":"train", cfg, B, warmup, steps, threads, profile}  training + eval throughput
 *  {"kind":"sgemm", threads, sizes}                             SGEMM peak of the BLAS
 *  {"kind":"idle"}                                              baseline RSS (runtime + library)
 */
import { dlopen, FFIType } from "bun:ffi";
import type { ModelCfg } from "../src/model/config.ts";
import { initParams } from "../src/model/layout.ts";
import { NativeModel, openLibrary, type HParams } from "../src/backend/native.ts";
import { learningRate } from "../src/train/schedule.ts";
import { Rng } from "../src/util/random.ts";
import type { CacheMeta } from "../src/data/meta.ts";
import type { TokenCache } from "../src/data/cache.ts";
import type { MixtureSource } from "../src/data/dataset.ts";
import { StreamDataset } from "../src/data/stream.ts";

export interface TrainJob {
  kind: "train";
  cfg: ModelCfg;
  B: number;
  warmup: number;
  steps: number;
  minSeconds: number; // timed steps go on until they took this long (and were >= steps)
  threads: number;
  profile: boolean;
}

const MAX_TIMED_STEPS = 500;

export interface SgemmJob {
  kind: "sgemm";
  threads: number;
  sizes: number[]; // square M = N = K
}

export interface IdleJob {
  kind: "idle";
}

export type Job = TrainJob | SgemmJob | IdleJob;

export interface TrainResult {
  stepS: number; // median wall time of a whole TS-side step
  nativeS: number; // median time inside model.trainStep (FFI call included)
  outsideShare: number; // (sum step - sum native) / sum step over the timed steps
  ffiCallUs: number; // one bun:ffi call with a typed-array argument, microseconds
  evalS: number; // median time of one evalLoss on a B x T batch
  firstLoss: number;
  lastLoss: number;
  profile: string; // native per-op breakdown of the timed steps ("" when off)
  timedSteps: number;
}

export interface SgemmResult {
  gflops: number; // best over sizes and repetitions
  bySize: Array<{ n: number; gflops: number }>;
  library: string;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

const HP: Omit<HParams, "lr"> = { weightDecay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, gradClip: 1.0 };
const SCHEDULE = { base_lr: 3e-4, min_lr: 3e-5, warmup_steps: 10, total_steps: 1000 };

/** The loop's own sampler (src/data/stream.ts) over three in-memory synthetic caches
 * mixed as the default pretrain mixture, so data sampling costs what it costs in a run. */
function syntheticStream(V: number, B: number, T: number): StreamDataset {
  const rng = new Rng(7, 0xbe4c);
  const mixture: Array<[string, number, number]> = [["wiki", 0.784, 1 << 22], ["roam", 0.196, 1 << 20], ["primer", 0.02, 1 << 16]];
  const sources: MixtureSource[] = mixture.map(([source, prob, n]) => {
    const tokens = new Uint16Array(n);
    for (let i = 0; i < n; i++) tokens[i] = rng.below(V);
    const meta: CacheMeta = { dtype: "uint16", num_tokens: n, vocab_size: V, tokenizer: "bench-synthetic", special_tokens: {} };
    const cache: TokenCache = {
      kind: "streams", binPath: `<synthetic ${source}>`, metaPath: `<synthetic ${source}>.meta.json`, boundaryPath: undefined,
      meta, tokens, numTokens: n, offsets: null, numExamples: 0, maxId: V - 1, mapped: false, validationMs: 0,
    };
    return { source, prob, cache };
  });
  return new StreamDataset(sources, { B, T, seed: 42 });
}

function runTrain(job: TrainJob): TrainResult {
  const { cfg, B } = job;
  if (cfg.V > 65536) throw new Error(`bench: V=${cfg.V} does not fit the uint16 synthetic caches`);
  const model = NativeModel.open(cfg, B, "cpu");
  try {
    model.setThreads(job.threads);
    model.setParams(initParams(cfg, 1));
    model.setOptState(null, null, 0);
    Bun.gc(true); // the initial weights were copied into the model: free them, as src/train/phase.ts does
    const data = syntheticStream(cfg.V, B, cfg.T);

    const stepTimes: number[] = [];
    const nativeTimes: number[] = [];
    let lossSum = 0;
    let skipped = 0;
    let firstLoss = NaN;
    let lastLoss = NaN;
    const timedLong = () => stepTimes.reduce((s, v) => s + v, 0) >= job.minSeconds || stepTimes.length >= MAX_TIMED_STEPS;
    for (let i = 0; i < job.warmup + job.steps || !timedLong(); i++) {
      if (i === job.warmup) model.profileReport(); // drop the warm-up from the breakdown
      const t0 = performance.now();
      const { x, y } = data.getBatch(i);
      const lr = learningRate(i, SCHEDULE);
      const t1 = performance.now();
      const r = model.trainStep(x, y, { ...HP, lr });
      const t2 = performance.now();
      // bookkeeping of the loop: running loss, skipped steps, tokens
      if (r.applied) lossSum += r.loss;
      else skipped++;
      if (i === 0) firstLoss = r.loss;
      if (i === job.warmup + job.steps - 1) lastLoss = r.loss; // the same step as PyTorch's
      const t3 = performance.now();
      if (i >= job.warmup) {
        stepTimes.push((t3 - t0) / 1e3);
        nativeTimes.push((t2 - t1) / 1e3);
      }
    }
    if (skipped > 0) throw new Error(`bench: ${skipped} steps were skipped (non-finite loss), sum ${lossSum}`);
    const profile = job.profile ? model.profileReport() : "";

    const sum = (a: number[]) => a.reduce((s, v) => s + v, 0);
    const outsideShare = (sum(stepTimes) - sum(nativeTimes)) / sum(stepTimes);

    const lib = openLibrary();
    const cfgArg = Int32Array.of(cfg.V, cfg.T, cfg.C, cfg.L, cfg.H, cfg.d_ff);
    const calls = 20000;
    const f0 = performance.now();
    for (let i = 0; i < calls; i++) lib.gpt_num_params(cfgArg);
    const ffiCallUs = ((performance.now() - f0) * 1e3) / calls;

    const evalTimes: number[] = [];
    const first = data.getBatch(0);
    model.evalLoss(first.x, first.y); // warm-up
    for (let i = 0; i < Math.max(3, job.steps); i++) {
      const { x, y } = data.getBatch(1000 + i);
      const e0 = performance.now();
      model.evalLoss(x, y);
      evalTimes.push((performance.now() - e0) / 1e3);
    }
    return {
      stepS: median(stepTimes),
      nativeS: median(nativeTimes),
      outsideShare,
      ffiCallUs,
      evalS: median(evalTimes),
      firstLoss,
      lastLoss,
      profile,
      timedSteps: stepTimes.length,
    };
  } finally {
    model.close();
  }
}

/** The BLAS the native library links: OpenBLAS on Linux, Accelerate on macOS. */
function blasLibraryPath(): string {
  if (process.env.BENCH_BLAS_LIB) return process.env.BENCH_BLAS_LIB;
  return process.platform === "darwin"
    ? "/System/Library/Frameworks/Accelerate.framework/Accelerate"
    : "libopenblas.so.0";
}

function runSgemm(job: SgemmJob): SgemmResult {
  const { i32, f32, ptr, void: none } = FFIType;
  const path = blasLibraryPath();
  const { symbols } = dlopen(path, {
    cblas_sgemm: { args: [i32, i32, i32, i32, i32, i32, f32, ptr, i32, ptr, i32, f32, ptr, i32], returns: none },
  });
  if (process.platform !== "darwin") {
    const { symbols: ob } = dlopen(path, { openblas_set_num_threads: { args: [i32], returns: none } });
    ob.openblas_set_num_threads(job.threads);
  }
  const ROW_MAJOR = 101;
  const NO_TRANS = 111;
  const TRANS = 112;
  const rng = new Rng(3);
  const bySize: Array<{ n: number; gflops: number }> = [];
  for (const n of job.sizes) {
    const a = new Float32Array(n * n).map(() => rng.uniform() - 0.5);
    const b = new Float32Array(n * n).map(() => rng.uniform() - 0.5);
    const c = new Float32Array(n * n);
    let best = Infinity;
    for (let rep = 0; rep < 6; rep++) {
      const t0 = performance.now();
      // C = A B^T, the shape of a Linear forward (x W^T)
      symbols.cblas_sgemm(ROW_MAJOR, NO_TRANS, TRANS, n, n, n, 1, a, n, b, n, 0, c, n);
      const dt = (performance.now() - t0) / 1e3;
      if (rep > 0) best = Math.min(best, dt); // the first call warms up threads and caches
    }
    bySize.push({ n, gflops: (2 * n * n * n) / best / 1e9 });
  }
  return { gflops: Math.max(...bySize.map((s) => s.gflops)), bySize, library: path };
}

function main(): void {
  const arg = process.argv[2];
  if (!arg) throw new Error("usage: bun bench/worker.ts '<job json>'");
  const job = JSON.parse(arg) as Job;
  let result: unknown;
  if (job.kind === "train") result = runTrain(job);
  else if (job.kind === "sgemm") result = runSgemm(job);
  else {
    openLibrary();
    result = {};
  }
  process.stdout.write(JSON.stringify(result) + "\n");
}

if (import.meta.main) main();
