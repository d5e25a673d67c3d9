/**
 * Training-speed benchmark: `bun bench/bench.ts [--shapes S1,S2,S3] [--steps N]
 * [--warmup N] [--min-seconds S] [--rounds N] [--threads N] [--profile] [--scaling] [--no-torch]
 * [--json FILE]`. Timed steps: at least --steps, and at least --min-seconds (default 3) of them,
 * so that a shape of 0.1 s steps is not judged on a fraction of a second.
 *
 * Each shape runs in --rounds rounds (default 3), ours then PyTorch in each, so that a
 * slow phase of a shared machine hits both sides; each side reports its best round
 * (the round medians are printed too), peak RSS the largest of its rounds.
 *
 * Every measurement runs in its own child process (bench/worker.ts for ours,
 * bench/torch_bench.py for PyTorch) so that its peak RSS is its own. Reports tokens/s
 * (median of the timed steps after warm-up), GFLOP/s and MFU against the SGEMM peak of
 * the same BLAS measured in the same run with the same thread count, eval tokens/s,
 * the share of a step spent outside the native call, peak RSS, and ours/PyTorch ratios.
 */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { defaultLibraryPath } from "../src/backend/native.ts";
import { FLOP_CONVENTION, matmulParams, trainFlopsPerToken } from "./flops.ts";
import { buildGemmBound, measureGemmBound, type GemmBound } from "./gemm-bound.ts";
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
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      shapes: { type: "string", default: "S1,S2,S3" },
      steps: { type: "string", default: "5" },
      warmup: { type: "string", default: "2" },
      rounds: { type: "string", default: "3" },
      "min-seconds": { type: "string", default: "3" },
      threads: { type: "string", default: "2" },
      profile: { type: "boolean", default: false },
      scaling: { type: "boolean", default: false },
      "no-torch": { type: "boolean", default: false },
      json: { type: "string" },
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
  };
}

interface ChildRun<T> {
  result: T;
  maxRssBytes: number;
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

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");
  return [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(line)].join("\n");
}

const fmt = (v: number, digits = 0) => (Number.isFinite(v) ? v.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }) : "-");
const mb = (bytes: number) => fmt(bytes / 2 ** 20);
const pct = (v: number) => `${fmt(100 * v, Math.abs(v) < 0.01 ? 3 : 1)}%`;
const shapeText = (s: Shape) => `V=${s.cfg.V} T=${s.cfg.T} C=${s.cfg.C} L=${s.cfg.L} H=${s.cfg.H} d_ff=${s.cfg.d_ff} B=${s.B}`;

/** "name seconds" lines of the native profile, as a sorted table with shares and ms/step. */
function profileTable(report: string, steps: number): string {
  const ops = report
    .trim()
    .split("\n")
    .map((l) => l.trim().split(/\s+/))
    .filter((p) => p.length === 2 && Number.isFinite(Number(p[1])))
    .map(([name, s]) => ({ name: name!, s: Number(s) }));
  if (ops.length === 0) return "  (no profile: the native library reported nothing; is GPT_PROFILE supported?)";
  const total = ops.reduce((a, o) => a + o.s, 0);
  ops.sort((a, b) => b.s - a.s);
  return table(
    ["op", "ms/step", "share"],
    [...ops.map((o) => [o.name, fmt((1e3 * o.s) / steps, 2), pct(o.s / total)]), ["(sum of ops)", fmt((1e3 * total) / steps, 2), "100%"]],
  ).replace(/^/gm, "  ");
}

// ---- main

interface ShapeRow {
  shape: Shape;
  ours: ChildRun<TrainResult>;
  torch: ChildRun<TorchTrain> | null;
  oursRounds: number[]; // tokens/s of each round
  torchRounds: number[];
  bound: GemmBound; // the step's GEMMs alone, fastest round
}

/** The round with the fastest median step, with the largest peak RSS of all rounds. */
function bestRound<T extends { stepS: number }>(runs: ChildRun<T>[]): ChildRun<T> {
  const best = runs.reduce((a, b) => (b.result.stepS < a.result.stepS ? b : a));
  return { result: best.result, maxRssBytes: Math.max(...runs.map((r) => r.maxRssBytes)) };
}

async function main(): Promise<void> {
  const opt = parseOptions(process.argv.slice(2));
  const lib = defaultLibraryPath();
  if (!existsSync(lib)) throw new Error(`native library ${lib} not found: build it with "bun scripts/build-native.ts"`);
  const torchVersion = opt.torch ? torchAvailable() : null;

  console.log(
    `train benchmark: ${opt.threads} threads, ${opt.warmup} warm-up + at least ${opt.steps} timed steps and ${opt.minSeconds} s (median), ` +
      `best of ${opt.rounds} interleaved round${opt.rounds > 1 ? "s" : ""} per side, fp32, CPU`,
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
    const tokens = shape.B * shape.cfg.T;
    rows.push({
      shape,
      ours: bestRound(oursRuns),
      torch: torchVersion ? bestRound(torchRuns) : null,
      oursRounds: oursRuns.map((r) => tokens / r.result.stepS),
      torchRounds: torchRuns.map((r) => tokens / r.result.stepS),
      bound: bounds.reduce((a, b) => (b.stepS < a.stepS ? b : a)),
    });
  }

  const scaling = opt.scaling ? await measureScaling(opt) : [];

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
      ["shape", "matmul params", "tok/s", "GFLOP/s", "MFU", "eval tok/s", "outside native/step", "ffi call", "peak RSS MB"],
      rows.map(({ shape, ours }) => {
        const tokens = shape.B * shape.cfg.T;
        const tps = tokens / ours.result.stepS;
        const gflops = (tps * trainFlopsPerToken(shape.cfg)) / 1e9;
        return [
          shape.name,
          `${fmt(matmulParams(shape.cfg) / 1e6, 2)}M`,
          fmt(tps),
          fmt(gflops, 1),
          pct(gflops / peak),
          fmt(tokens / ours.result.evalS),
          `${fmt((ours.result.stepS - ours.result.nativeS) * 1e3, 2)} ms (${pct(ours.result.outsideShare)})`,
          `${fmt(ours.result.ffiCallUs, 2)} us`,
          mb(ours.maxRssBytes),
        ];
      }),
    ),
  );
  for (const { shape } of rows) console.log(`  ${shape.name}: ${shapeText(shape)}`);
  if (opt.rounds > 1) {
    const list = (v: number[]) => v.map((x) => fmt(x)).join(" / ");
    for (const { shape, oursRounds, torchRounds } of rows)
      console.log(
        `  ${shape.name} tok/s by round: ours ${list(oursRounds)}` + (torchRounds.length ? `, torch ${list(torchRounds)}` : ""),
      );
  }

  if (torchVersion) {
    console.log(`\nAgainst PyTorch ${torchVersion} (interop/reference_gpt.py, AdamW + clip_grad_norm_, torch.set_num_threads(${opt.threads}))`);
    console.log(
      table(
        ["shape", "torch tok/s", "torch GFLOP/s", "torch MFU", "torch eval tok/s", "torch RSS MB", "ours/torch tok/s", "ours/torch eval", "ours/torch RSS"],
        rows.map(({ shape, ours, torch }) => {
          const tokens = shape.B * shape.cfg.T;
          const t = torch!.result;
          const gflops = ((tokens / t.stepS) * trainFlopsPerToken(shape.cfg)) / 1e9;
          return [
            shape.name,
            fmt(tokens / t.stepS),
            fmt(gflops, 1),
            pct(gflops / peak),
            fmt(tokens / t.evalS),
            mb(torch!.maxRssBytes),
            `${fmt(t.stepS / ours.result.stepS, 2)}x`,
            `${fmt(t.evalS / ours.result.evalS, 2)}x`,
            `${fmt(ours.maxRssBytes / torch!.maxRssBytes, 2)}x`,
          ];
        }),
      ),
    );
    console.log("  RSS is the whole process (runtime included); the baselines above show each runtime's share.");
    console.log("  Loss after the timed steps (same data distribution, same init scheme):");
    for (const { shape, ours, torch } of rows) {
      console.log(`    ${shape.name}: ours ${fmt(ours.result.firstLoss, 3)} -> ${fmt(ours.result.lastLoss, 3)}, torch ${fmt(torch!.result.firstLoss, 3)} -> ${fmt(torch!.result.lastLoss, 3)}`);
    }
  }

  printGemmBound(rows, opt, peak);

  if (opt.profile) {
    for (const { shape, ours } of rows) {
      console.log(`\nNative per-op breakdown, ${shape.name} (${ours.result.timedSteps} timed steps, native step ${fmt(ours.result.nativeS * 1e3, 1)} ms median):`);
      console.log(profileTable(ours.result.profile, ours.result.timedSteps));
    }
  }

  if (opt.scaling) printScaling(scaling, opt, peak);
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
          shapes: rows.map((r) => ({ shape: r.shape, ours: r.ours, torch: r.torch, oursRounds: r.oursRounds, torchRounds: r.torchRounds })),
          scaling,
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
        const tokens = shape.B * shape.cfg.T;
        const gflops = bound.gemmFlops / bound.stepS / 1e9;
        return [
          shape.name,
          fmt(bound.stepS * 1e3, 1),
          fmt(gflops, 1),
          pct(gflops / peak),
          fmt(tokens / bound.stepS),
          `${fmt(bound.stepS / ours.result.stepS, 2)}x`,
          ...(torch ? [`${fmt(torch.result.stepS / bound.stepS, 2)}x`] : []),
        ];
      }),
    ),
  );
  console.log(
    "  GEMM-only/torch is the most any step could gain over PyTorch with these GEMMs, were everything else free;" +
      `\n  lanes: ${rows.map((r) => `${r.shape.name} ${r.bound.lanes === 1 ? "one BLAS-threaded list" : `${r.bound.lanes} lanes`}`).join(", ")}`,
  );
}

// ---- scaling: B x T at S2's width

interface ScalingRow {
  B: number;
  T: number;
  tokensPerS: number;
  gflops: number;
  maxRssBytes: number;
}

const SCALING_B = [4, 8, 16, 32];
const SCALING_T = [64, 128, 256, 512];
const SCALING_FLAG = 0.8; // flag a cell below 80% of the median FLOP rate

function scalingSteps(opt: Options): number {
  return Math.min(opt.steps, 3);
}

async function measureScaling(opt: Options): Promise<ScalingRow[]> {
  const base = SHAPES.S2!.cfg;
  const steps = scalingSteps(opt);
  const out: ScalingRow[] = [];
  for (const T of SCALING_T) {
    for (const B of SCALING_B) {
      process.stderr.write(`scaling B=${B} T=${T} ...\n`);
      const cfg = { ...base, T };
      const r = await runOurs<TrainResult>(
        { kind: "train", cfg, B, warmup: 1, steps, minSeconds: 0, threads: opt.threads, profile: false },
        opt.threads,
      );
      const tps = (B * T) / r.result.stepS;
      out.push({ B, T, tokensPerS: tps, gflops: (tps * trainFlopsPerToken(cfg)) / 1e9, maxRssBytes: r.maxRssBytes });
    }
  }
  return out;
}

function printScaling(out: ScalingRow[], opt: Options, peak: number): void {
  const base = SHAPES.S2!.cfg;
  const steps = scalingSteps(opt);
  const med = [...out.map((r) => r.gflops)].sort((a, b) => a - b)[out.length >> 1]!;
  console.log(`\nScaling at S2's width (C=384 L=6 H=6 d_ff=1536 V=4096), ${steps} timed steps each, median FLOP rate ${fmt(med, 1)} GFLOP/s`);
  console.log("  cost/token is time per token over FLOPs per token (attention term included), relative to the median;");
  console.log(`  a cell is flagged when it is > ${fmt(1 / SCALING_FLAG, 2)}x: cost not explained by FLOPs.`);
  console.log(
    table(
      ["B", "T", "tokens/step", "tok/s", "GFLOP/s", "MFU", "attn FLOP share", "cost/token", "peak RSS MB", "flag"],
      out.map((r) => {
        const cfg = { ...base, T: r.T };
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

main().catch((e: unknown) => {
  console.error(`bench: ${(e as Error).message}`);
  process.exit(1);
});
