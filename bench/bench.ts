/**
 * Training-speed benchmark: `bun bench/bench.ts [--shapes S1,S2,S3,S4] [--steps N]
 * [--warmup N] [--min-seconds S] [--rounds N] [--threads N] [--profile] [--scaling] [--no-torch]
 * [--checkpoint S4|...|none] [--json FILE]`. --checkpoint: the checkpoint I/O rows' shape
 * (bench/checkpoint-io.ts: save and load time and added peak RSS against torch.save /
 * torch.load; default S4, --rounds rounds). Timed steps: at least --steps, and at least --min-seconds (default 3) of them,
 * so that a shape of 0.1 s steps is not judged on a fraction of a second.
 * CI-sized (proves it runs, measures nothing): --shapes S1 --rounds 1 --warmup 0 --steps 1 --min-seconds 0 --checkpoint S1.
 *
 * Each shape runs in --rounds rounds (default 3), ours then PyTorch in each, so that a
 * slow phase of a shared machine hits both sides. Each side is judged by its median round
 * (the round of the median step time; of an even count the slower middle one), printed
 * with its best and worst round beside it, and every ratio is of medians: PyTorch's speed
 * here moves by a third between rounds, and best against best would reward the noisier
 * side's lucky round. Peak RSS is the largest of a side's rounds.
 *
 * Every measurement runs in its own child process (bench/worker.ts for ours,
 * bench/torch_bench.py for PyTorch) so that its peak RSS is its own. Reports tokens/s
 * (median of the timed steps after warm-up), GFLOP/s and MFU against the SGEMM peak of
 * the same BLAS measured in the same run with the same thread count, eval tokens/s,
 * the share of a step spent outside the native call, peak RSS, and ours/PyTorch ratios;
 * then the decode row of S1 and S2 (bench/decode.ts: `train sample`'s tokens/s vs PyTorch's).
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { defaultLibraryPath } from "../src/backend/native.ts";
import { numParams } from "../src/model/layout.ts";
import { FLOP_CONVENTION, matmulParams, trainFlopsPerToken } from "./flops.ts";
import { measureCheckpointIo, printCheckpointIo } from "./checkpoint-io.ts";
import { fmt, mb, pct, table } from "./format.ts";
import { buildGemmBound, measureGemmBound, type GemmBound } from "./gemm-bound.ts";
import { decodeBench } from "./decode.ts";
import { type ChildRun, middle, rounds, type Rounds } from "./rounds.ts";
import { SHAPES, shapeNamed, type Shape } from "./shapes.ts";
import type { Job, SgemmResult, TrainResult } from "./worker.ts";

const PYTHON = process.env.BENCH_PYTHON ?? "/usr/bin/python3";

interface Options {
  shapes: Shape[];
  steps: number;
  warmup: number;
  minSeconds: number;
  rounds: number;
  threads: number;
  profile: boolean;
  scaling: boolean;
  torch: boolean;
  json: string | null;
  checkpoint: Shape | null; // the checkpoint I/O rows' shape (bench/checkpoint-io.ts), or none
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      shapes: { type: "string", default: "S1,S2,S3,S4" },
      steps: { type: "string", default: "5" },
      warmup: { type: "string", default: "2" },
      rounds: { type: "string", default: "3" },
      "min-seconds": { type: "string", default: "3" },
      threads: { type: "string", default: "2" },
      profile: { type: "boolean", default: false },
      scaling: { type: "boolean", default: false },
      "no-torch": { type: "boolean", default: false },
      json: { type: "string" },
      checkpoint: { type: "string", default: "S4" },
    },
    strict: true,
  });
  const int = (name: string, v: string, min: number): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name}: expected an integer >= ${min}, got "${v}"`);
    return n;
  };
  const shapes = values.shapes!.split(",").filter((s) => s !== "").map((s) => {
    return shapeNamed(s);
  });
  return {
    shapes,
    steps: int("steps", values.steps!, 1),
    warmup: int("warmup", values.warmup!, 0),
    rounds: int("rounds", values.rounds!, 1),
    minSeconds: int("min-seconds", values["min-seconds"]!, 0),
    threads: int("threads", values.threads!, 1),
    profile: values.profile!,
    scaling: values.scaling!,
    torch: !values["no-torch"],
    json: values.json ?? null,
    checkpoint: values.checkpoint === "none" ? null : shapeNamed(values.checkpoint!),
  };
}

/** Run one measurement in a child process; its peak RSS comes from the OS (getrusage). */
async function runChild<T>(cmd: string[], env: Record<string, string>): Promise<ChildRun<T>> {
  const proc = Bun.spawn(cmd, { env: { ...process.env, ...env }, stdout: "pipe", stderr: "pipe" });
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  if (code !== 0) throw new Error(`${cmd.slice(0, 2).join(" ")} failed (exit ${code}):\n${stderr.trim()}`);
  const lines = stdout.trim().split("\n");
  const usage = proc.resourceUsage();
  return { result: JSON.parse(lines[lines.length - 1]!) as T, maxRssBytes: usage ? usage.maxRSS : NaN };
}

function threadEnv(threads: number): Record<string, string> {
  const n = String(threads);
  return { OPENBLAS_NUM_THREADS: n, OMP_NUM_THREADS: n, VECLIB_MAXIMUM_THREADS: n };
}

function runOurs<T>(job: Job, threads: number, profile = false): Promise<ChildRun<T>> {
  const env = { ...threadEnv(threads), GPT_PROFILE: profile ? "1" : "0" };
  return runChild<T>([process.execPath, join(import.meta.dir, "worker.ts"), JSON.stringify(job)], env);
}

interface TorchTrain {
  stepS: number;
  evalS: number;
  firstLoss: number;
  lastLoss: number;
  torch: string;
}

/** PyTorch at its best on this set-up: Debian's torch runs OpenMP threads next to
 * OpenBLAS's pthreads; with OpenMP's default spin-waiting they fight over the cores
 * (measured: S1 2.7x slower), so the reference runs with OMP_WAIT_POLICY=PASSIVE. */
function runTorch<T>(job: object, threads: number): Promise<ChildRun<T>> {
  const env = { ...threadEnv(threads), OMP_WAIT_POLICY: "PASSIVE" };
  return runChild<T>([PYTHON, join(import.meta.dir, "torch_bench.py"), JSON.stringify(job)], env);
}

function torchAvailable(): string | null {
  const p = Bun.spawnSync([PYTHON, "-c", "import torch; print(torch.__version__)"], { stdout: "pipe", stderr: "pipe" });
  return p.exitCode === 0 ? p.stdout.toString().trim() : null;
}

/** Cores busy (all processes) over the next `ms` from /proc/stat, or null without it. */
async function busyCores(ms: number): Promise<number | null> {
  const sample = (): { busy: number; total: number } | null => {
    try {
      const cpu = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
      const idle = cpu[3]! + (cpu[4] ?? 0); // idle + iowait
      const total = cpu.slice(0, 8).reduce((a, b) => a + b, 0); // user .. steal
      return { busy: total - idle, total };
    } catch {
      return null;
    }
  };
  const a = sample();
  if (!a) return null;
  await Bun.sleep(ms);
  const b = sample()!;
  return b.total > a.total ? ((b.busy - a.busy) / (b.total - a.total)) * cpus().length : 0;
}

// ---- formatting

const shapeText = (s: Shape) => `V=${s.cfg.V} T=${s.cfg.T} C=${s.cfg.C} L=${s.cfg.L} H=${s.cfg.H} d_ff=${s.cfg.d_ff} B=${s.B}`;

/** The "name seconds" lines of the native profile (GPT_PROFILE=1). */
function profileOps(report: string): Array<{ name: string; s: number }> {
  return report
    .trim()
    .split("\n")
    .map((l) => l.trim().split(/\s+/))
    .filter((p) => p.length === 2 && Number.isFinite(Number(p[1])))
    .map(([name, s]) => ({ name: name!, s: Number(s) }));
}

/** The native profile as a sorted table with shares and ms/step. */
function profileTable(report: string, steps: number): string {
  const ops = profileOps(report);
  if (ops.length === 0) return "  (no profile: the native library reported nothing; is GPT_PROFILE supported?)";
  const total = ops.reduce((a, o) => a + o.s, 0);
  ops.sort((a, b) => b.s - a.s);
  return table(
    ["op", "ms/step", "share"],
    [...ops.map((o) => [o.name, fmt((1e3 * o.s) / steps, 2), pct(o.s / total)]), ["(sum of ops)", fmt((1e3 * total) / steps, 2), "100%"]],
  ).replace(/^/gm, "  ");
}

/** The profile's ops of the LM head (native/cpu/model.c's names): logits, their softmax + cross-entropy, and back. */
const LM_HEAD_OPS = ["lm_head.fwd", "softmax_cross_entropy", "lm_head.bwd"];
const BYTES_PER_PARAM_STATE = 16; // fp32 parameter, gradient and both AdamW moments

/** The LM head's share of the profiled step, and of the parameter state by count (its weight is wte, tied). */
function lmHeadShare(report: string, shape: Shape): string {
  const ops = profileOps(report);
  const total = ops.reduce((a, o) => a + o.s, 0);
  const head = ops.filter((o) => LM_HEAD_OPS.includes(o.name)).reduce((a, o) => a + o.s, 0);
  const headParams = shape.cfg.V * shape.cfg.C;
  const params = numParams(shape.cfg);
  return (
    `  LM head (${LM_HEAD_OPS.join(" + ")}): ${total > 0 ? pct(head / total) : "-"} of the step's ops; its weight (wte, tied) ` +
    `V*C = ${fmt(headParams / 1e6, 1)}M of ${fmt(params / 1e6, 1)}M parameters: ${mb(headParams * BYTES_PER_PARAM_STATE)} MB of the ` +
    `${mb(params * BYTES_PER_PARAM_STATE)} MB that parameters, gradients and AdamW moments take`
  );
}

// ---- main

interface ShapeRow {
  shape: Shape;
  ours: Rounds<TrainResult>;
  torch: Rounds<TorchTrain> | null;
  bound: GemmBound; // the step's GEMMs alone, fastest round (a bound: the fastest seen)
}

const tokensPerStep = (s: Shape) => s.B * s.cfg.T;
/** "median (best / worst)" tokens/s of a side. */
const spread = (shape: Shape, r: Rounds<{ stepS: number; evalS: number }>) =>
  `${fmt(tokensPerStep(shape) / r.median.stepS)} (${fmt(tokensPerStep(shape) / r.best.stepS)} / ${fmt(tokensPerStep(shape) / r.worst.stepS)})`;

async function main(): Promise<void> {
  const opt = parseOptions(process.argv.slice(2));
  const lib = defaultLibraryPath();
  if (!existsSync(lib)) throw new Error(`native library ${lib} not found: build it with "bun scripts/build-native.ts"`);
  const torchVersion = opt.torch ? torchAvailable() : null;

  console.log(
    `train benchmark: ${opt.threads} threads, ${opt.warmup} warm-up + at least ${opt.steps} timed steps and ${opt.minSeconds} s (median), ` +
      `median of ${opt.rounds} interleaved round${opt.rounds > 1 ? "s" : ""} per side (best / worst beside it), fp32, CPU`,
  );
  console.log(FLOP_CONVENTION);
  const load = () => loadavg()[0]!;
  // what other processes use now: the 1-minute load average still counts the build
  // `npm run bench` just ran, so where /proc/stat exists the cores are sampled instead
  const busy = await busyCores(1000);
  if (busy !== null ? busy > 0.3 : load() > 0.5)
    console.log(
      `WARNING: ${busy !== null ? `${fmt(busy, 2)} cores busy` : `load average ${fmt(load(), 2)}`} at start: ` +
        "other processes share the cores, figures are unreliable",
    );

  const sgemmJob: Job = { kind: "sgemm", threads: opt.threads, sizes: [2048, 3072] };
  const sgemmStart = await runOurs<SgemmResult>(sgemmJob, opt.threads);
  const idle = await runOurs<object>({ kind: "idle" }, opt.threads);
  const torchIdle = torchVersion ? await runTorch<object>({ kind: "idle", threads: opt.threads }, opt.threads) : null;
  console.log(
    `baseline RSS: bun + libgpt ${mb(idle.maxRssBytes)} MB` +
      (torchIdle
        ? `, python + torch ${torchVersion} ${mb(torchIdle.maxRssBytes)} MB`
        : opt.torch ? `, PyTorch: ${PYTHON} has no torch (comparison skipped)` : ", PyTorch: not run (--no-torch)"),
  );

  const boundBin = buildGemmBound();
  const rows: ShapeRow[] = [];
  for (const shape of opt.shapes) {
    process.stderr.write(`measuring ${shape.name} (${shapeText(shape)}) ...\n`);
    const job = { cfg: shape.cfg, B: shape.B, warmup: opt.warmup, steps: opt.steps, minSeconds: opt.minSeconds, threads: opt.threads };
    const oursRuns: ChildRun<TrainResult>[] = [];
    const torchRuns: ChildRun<TorchTrain>[] = [];
    const bounds: GemmBound[] = [];
    for (let r = 0; r < opt.rounds; r++) {
      oursRuns.push(await runOurs<TrainResult>({ kind: "train", ...job, profile: opt.profile }, opt.threads, opt.profile));
      if (torchVersion) torchRuns.push(await runTorch<TorchTrain>({ kind: "train", ...job }, opt.threads));
      bounds.push(measureGemmBound(boundBin, shape, opt.threads, bounds[0]?.lanes));
    }
    rows.push({
      shape,
      ours: rounds(oursRuns),
      torch: torchVersion ? rounds(torchRuns) : null,
      bound: bounds.reduce((a, b) => (b.stepS < a.stepS ? b : a)),
    });
  }

  const scaling = opt.scaling ? await measureScaling(opt) : [];
  const checkpointIo = opt.checkpoint ? await measureCheckpointIo({ shape: opt.checkpoint, rounds: opt.rounds, torch: torchVersion !== null }) : null;

  // The peak again at the end: a busy moment at the start must not inflate the MFU.
  const sgemmEnd = await runOurs<SgemmResult>(sgemmJob, opt.threads);
  const sgemm = sgemmEnd.result.gflops > sgemmStart.result.gflops ? sgemmEnd : sgemmStart;
  const peak = sgemm.result.gflops;
  const sizes = (r: SgemmResult) => r.bySize.map((s) => `${s.n}^3 ${fmt(s.gflops, 1)}`).join(", ");
  console.log(
    `SGEMM peak (${sgemm.result.library}, ${opt.threads} threads): ${fmt(peak, 1)} GFLOP/s, the best of ` +
      `start (${sizes(sgemmStart.result)}) and end (${sizes(sgemmEnd.result)})`,
  );

  console.log("\nTraining throughput (ours)");
  console.log(
    table(
      ["shape", "matmul params", "tok/s median (best / worst)", "GFLOP/s", "MFU", "eval tok/s", "outside native/step", "ffi call", "peak RSS MB"],
      rows.map(({ shape, ours }) => {
        const m = ours.median;
        const gflops = ((tokensPerStep(shape) / m.stepS) * trainFlopsPerToken(shape.cfg)) / 1e9;
        return [
          shape.name,
          `${fmt(matmulParams(shape.cfg) / 1e6, 2)}M`,
          spread(shape, ours),
          fmt(gflops, 1),
          pct(gflops / peak),
          fmt(tokensPerStep(shape) / ours.evalS),
          `${fmt((m.stepS - m.nativeS) * 1e3, 2)} ms (${pct(m.outsideShare)})`,
          `${fmt(m.ffiCallUs, 2)} us`,
          mb(ours.maxRssBytes),
        ];
      }),
    ),
  );
  console.log("  GFLOP/s, MFU and the per-step figures are of the median round; eval tok/s is the median of the rounds' eval speeds.");
  for (const { shape } of rows) console.log(`  ${shape.name}: ${shapeText(shape)}`);
  if (opt.rounds > 1) {
    const list = (shape: Shape, r: Rounds<{ stepS: number; evalS: number }>) => r.inOrder.map((x) => fmt(tokensPerStep(shape) / x.stepS)).join(" / ");
    for (const { shape, ours, torch } of rows)
      console.log(`  ${shape.name} tok/s by round, in the order run: ours ${list(shape, ours)}` + (torch ? `, torch ${list(shape, torch)}` : ""));
  }

  if (torchVersion) {
    console.log(`\nAgainst PyTorch ${torchVersion} (interop/reference_gpt.py, AdamW + clip_grad_norm_, torch.set_num_threads(${opt.threads}))`);
    console.log(
      table(
        ["shape", "torch tok/s median (best / worst)", "torch GFLOP/s", "torch MFU", "torch eval tok/s", "torch RSS MB", "ours/torch tok/s", "ours/torch eval", "ours/torch RSS"],
        rows.map(({ shape, ours, torch }) => {
          const t = torch!;
          const gflops = ((tokensPerStep(shape) / t.median.stepS) * trainFlopsPerToken(shape.cfg)) / 1e9;
          return [
            shape.name,
            spread(shape, t),
            fmt(gflops, 1),
            pct(gflops / peak),
            fmt(tokensPerStep(shape) / t.evalS),
            mb(t.maxRssBytes),
            `${fmt(t.median.stepS / ours.median.stepS, 2)}x`,
            `${fmt(t.evalS / ours.evalS, 2)}x`,
            `${fmt(ours.maxRssBytes / t.maxRssBytes, 2)}x`,
          ];
        }),
      ),
    );
    console.log("  Ratios are of the two sides' medians. RSS is the whole process (runtime included); the baselines above show each runtime's share.");
    console.log("  Loss over the timed steps of the median round (same data distribution, same init scheme):");
    for (const { shape, ours, torch } of rows) {
      console.log(`    ${shape.name}: ours ${fmt(ours.median.firstLoss, 3)} -> ${fmt(ours.median.lastLoss, 3)}, torch ${fmt(torch!.median.firstLoss, 3)} -> ${fmt(torch!.median.lastLoss, 3)}`);
    }
  }

  printGemmBound(rows, opt, peak);

  const decodeShapes = opt.shapes.filter((s) => s.name === "S1" || s.name === "S2");
  if (torchVersion && decodeShapes.length > 0) {
    console.log(`\nDecode (train sample's KV-cached greedy decoding vs PyTorch ${torchVersion} with a KV cache, interop/torch_decode.py; bench/decode.ts)`);
    await decodeBench(decodeShapes, opt.rounds, opt.threads);
  }

  if (opt.profile) {
    for (const { shape, ours } of rows) {
      const m = ours.median;
      console.log(`\nNative per-op breakdown, ${shape.name}, median round (${m.timedSteps} timed steps, native step ${fmt(m.nativeS * 1e3, 1)} ms median):`);
      console.log(profileTable(m.profile, m.timedSteps));
      console.log(lmHeadShare(m.profile, shape));
    }
  }

  if (opt.scaling) printScaling(scaling, opt, peak);
  if (checkpointIo) printCheckpointIo(checkpointIo);
  // The run itself keeps the 1-minute load near the thread count; more means contention.
  const loadAtEnd = load();
  if (loadAtEnd > opt.threads + 0.5) console.log(`\nWARNING: load average ${fmt(loadAtEnd, 2)} at the end (> ${opt.threads} threads + 0.5): other processes competed for the cores`);

  if (opt.json) {
    writeFileSync(
      opt.json,
      JSON.stringify(
        {
          threads: opt.threads,
          convention: FLOP_CONVENTION,
          sgemm: { start: sgemmStart.result, end: sgemmEnd.result },
          baselineRss: { ours: idle.maxRssBytes, torch: torchIdle?.maxRssBytes ?? null },
          rounds: opt.rounds,
          shapes: rows.map((r) => ({ shape: r.shape, ours: r.ours, torch: r.torch, gemmBound: r.bound })),
          scaling,
          checkpointIo,
        },
        null,
        2,
      ),
    );
  }
}

/** What the step's GEMMs alone allow: no step with these GEMMs can be faster. */
function printGemmBound(rows: ShapeRow[], opt: Options, peak: number): void {
  console.log(
    `\nThe step's GEMMs alone (bench/gemm_bound.c: every matmul of a step, same shapes, through the library's GEMMs; ` +
      `no attention, elementwise op or optimizer), best of ${opt.rounds} round${opt.rounds > 1 ? "s" : ""}`,
  );
  console.log(
    table(
      ["shape", "GEMM ms/step", "GEMM GFLOP/s", "of peak", "GEMM-only tok/s", "ours/GEMM-only", ...(rows[0]?.torch ? ["GEMM-only/torch"] : [])],
      rows.map(({ shape, ours, torch, bound }) => {
        const gflops = bound.gemmFlops / bound.stepS / 1e9;
        return [
          shape.name,
          fmt(bound.stepS * 1e3, 1),
          fmt(gflops, 1),
          pct(gflops / peak),
          fmt(tokensPerStep(shape) / bound.stepS),
          `${fmt(bound.stepS / ours.median.stepS, 2)}x`,
          ...(torch ? [`${fmt(torch.median.stepS / bound.stepS, 2)}x`] : []),
        ];
      }),
    ),
  );
  console.log(
    "  ours/GEMM-only and GEMM-only/torch take each side's median round; GEMM-only/torch is the most any step could gain\n" +
      "  over PyTorch with these GEMMs, were everything else free;" +
      `\n  lanes: ${rows.map((r) => `${r.shape.name} ${r.bound.lanes === 1 ? "one BLAS-threaded list" : `${r.bound.lanes} lanes`}`).join(", ")}`,
  );
}

// ---- scaling: B x T at a shape's width

interface ScalingGrid {
  base: Shape; // its width, depth and vocabulary; B and T vary
  B: number[];
  T: number[];
}

/** S2's width over a B x T grid, and GPT-2 small (S4) at B = 4 (memory and speed at 4x S4's batch). */
const SCALING_GRIDS: ScalingGrid[] = [
  { base: SHAPES.S2!, B: [4, 8, 16, 32], T: [64, 128, 256, 512] },
  { base: SHAPES.S4!, B: [1, 2, 4], T: [256, 512, 1024] }, // issue 22: GPT-2 small, no cliff up to its context
];

interface ScalingRow {
  B: number;
  T: number;
  tokensPerS: number;
  gflops: number;
  maxRssBytes: number;
}

interface ScalingResult {
  grid: ScalingGrid;
  rows: ScalingRow[];
}

const SCALING_FLAG = 0.8; // flag a cell below 80% of the grid's median FLOP rate

function scalingSteps(opt: Options): number {
  return Math.min(opt.steps, 3);
}

async function measureScaling(opt: Options): Promise<ScalingResult[]> {
  const steps = scalingSteps(opt);
  const out: ScalingResult[] = [];
  for (const grid of SCALING_GRIDS) {
    const rows: ScalingRow[] = [];
    for (const T of grid.T) {
      for (const B of grid.B) {
        process.stderr.write(`scaling ${grid.base.name} B=${B} T=${T} ...\n`);
        const cfg = { ...grid.base.cfg, T };
        const r = await runOurs<TrainResult>(
          { kind: "train", cfg, B, warmup: 1, steps, minSeconds: 0, threads: opt.threads, profile: false },
          opt.threads,
        );
        const tps = (B * T) / r.result.stepS;
        rows.push({ B, T, tokensPerS: tps, gflops: (tps * trainFlopsPerToken(cfg)) / 1e9, maxRssBytes: r.maxRssBytes });
      }
    }
    out.push({ grid, rows });
  }
  return out;
}

function printScaling(results: ScalingResult[], opt: Options, peak: number): void {
  const steps = scalingSteps(opt);
  for (const { grid, rows } of results) {
    const { C, L, H, d_ff, V } = grid.base.cfg;
    const med = middle(rows.map((r) => r.gflops));
    console.log(`\nScaling at ${grid.base.name}'s width (C=${C} L=${L} H=${H} d_ff=${d_ff} V=${V}), ${steps} timed steps each, median FLOP rate ${fmt(med, 1)} GFLOP/s`);
    console.log("  cost/token is time per token over FLOPs per token (attention term included), relative to the median;");
    console.log(`  a cell is flagged when it is > ${fmt(1 / SCALING_FLAG, 2)}x: cost not explained by FLOPs.`);
    console.log(
      table(
        ["B", "T", "tokens/step", "tok/s", "GFLOP/s", "MFU", "attn FLOP share", "cost/token", "peak RSS MB", "flag"],
        rows.map((r) => {
          const cfg = { ...grid.base.cfg, T: r.T };
          const attnShare = (12 * cfg.L * cfg.T * cfg.C) / trainFlopsPerToken(cfg);
          return [
            String(r.B),
            String(r.T),
            String(r.B * r.T),
            fmt(r.tokensPerS),
            fmt(r.gflops, 1),
            pct(r.gflops / peak),
            pct(attnShare),
            `${fmt(med / r.gflops, 2)}x`,
            mb(r.maxRssBytes),
            r.gflops < SCALING_FLAG * med ? "NOT FLAT" : "",
          ];
        }),
      ),
    );
  }
}

main().catch((e: unknown) => {
  console.error(`bench: ${(e as Error).message}`);
  process.exit(1);
});
