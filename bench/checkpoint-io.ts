/**
 * Checkpoint I/O benchmark (issue 22): save and load time of a checkpoint with AdamW
 * moments, and the peak RSS each adds, ours against torch.save / torch.load of the same
 * state dict. `bun bench/checkpoint-io.ts [--shape S4] [--rounds 3]`; `npm run bench` runs
 * it after the training rows (bench.ts --checkpoint SHAPE|none). CI-sized: --shape S1 --rounds 1.
 *
 * Every measurement is its own child process, and the sides alternate within each round
 * (ours save, torch.save, torch.save + fsync, ours load, torch.load; odd rounds run the
 * saves and the loads in the reverse order) so that a busy moment of a shared machine hits
 * both; each side is judged by its median round. Added peak RSS:
 * the RSS before the timed call against the peak during it (Linux: /proc/self/clear_refs
 * resets the peak, VmHWM reads it), so the model's own buffers (ours) or the state dict
 * being saved (torch) are not counted, the memory the call needs on top is.
 *   - ours save: saveCheckpoint from the native model's buffers (streamed in 1 MiB ranges,
 *     every value checked finite as in a run), temp file, fsync, rename, fsync of the folder.
 *   - ours load: loadCheckpointInto a model whose buffers were already touched.
 *   - torch.save, with and without fsync of the file and its folder; torch.load.
 * Both loads read the file ours just wrote, from the page cache.
 */
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { NativeModel, type StateBuffer } from "../src/backend/native.ts";
import { loadCheckpointInto, saveCheckpoint } from "../src/checkpoint/checkpoint.ts";
import { numParams } from "../src/model/layout.ts";
import { soundState } from "../src/train/phase.ts";
import { fmt, mb, pct, table } from "./format.ts";
import { middle } from "./rounds.ts";
import { shapeNamed, type Shape } from "./shapes.ts";

const PYTHON = process.env.BENCH_PYTHON ?? "/usr/bin/python3";

type OursJob = { kind: "save"; shape: string; to: string } | { kind: "load"; shape: string; from: string };
type TorchJob = { kind: "save"; from: string; to: string; fsync: boolean } | { kind: "load"; from: string };

/** What one timed call cost: its time, the RSS before it, how far the peak rose above that. */
interface IoResult {
  seconds: number;
  baselineBytes: number;
  addedPeakBytes: number;
}

interface Measured extends IoResult {
  processPeakBytes: number; // the child's whole-life peak (getrusage)
}

// ---- the child: one timed save or load of ours

function statusBytes(key: string): number {
  const line = readFileSync("/proc/self/status", "utf8").split("\n").find((l) => l.startsWith(`${key}:`));
  if (!line) throw new Error(`no ${key} in /proc/self/status`);
  return Number(line.split(/\s+/)[1]) * 1024;
}

function resetPeak(): void {
  writeFileSync("/proc/self/clear_refs", "5");
}

/** Writes a deterministic state into every buffer of the model (touching its memory) through one 4 MiB buffer. */
function fillModel(model: NativeModel, step: number): void {
  model.resetOptState(step);
  const buf = new Float32Array(1 << 20);
  const scale: Record<StateBuffer, number> = { params: 0.02, m: 1e-3, v: 1e-6 };
  for (const which of ["params", "m", "v"] as const) {
    for (let at = 0; at < model.numParams; at += buf.length) {
      const part = buf.subarray(0, Math.min(buf.length, model.numParams - at));
      for (let i = 0; i < part.length; i++) part[i] = (((at + i) % 9973) / 9973 - (which === "v" ? 0 : 0.5)) * scale[which];
      model.writeState(which, at, part);
    }
  }
}

function runOursJob(job: OursJob): IoResult {
  const shape = shapeNamed(job.shape);
  const model = NativeModel.open(shape.cfg, 1, "cpu");
  try {
    const step = 10;
    fillModel(model, step);
    const baselineBytes = statusBytes("VmRSS");
    resetPeak();
    const t0 = performance.now();
    if (job.kind === "save") {
      const state = soundState(model, shape.cfg, step, () => "the bench has no checkpoint to keep");
      saveCheckpoint(job.to, {
        modelCfg: shape.cfg,
        trainCfg: { bench: "checkpoint-io" },
        params: state.params,
        opt: { m: state.m, v: state.v, step: model.optStep(), hparams: { lr: 3e-4, weightDecay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8 } },
        step,
        bestValLoss: 3.25,
      });
    } else {
      loadCheckpointInto(model, job.from);
    }
    const seconds = (performance.now() - t0) / 1e3;
    return { seconds, baselineBytes, addedPeakBytes: Math.max(0, statusBytes("VmHWM") - baselineBytes) };
  } finally {
    model.close();
  }
}

// ---- the parent

async function child(cmd: string[]): Promise<Measured> {
  const proc = Bun.spawn(cmd, { stdout: "pipe", stderr: "pipe", env: { ...process.env, OMP_WAIT_POLICY: "PASSIVE" } });
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  if (code !== 0) throw new Error(`${cmd.slice(0, 2).join(" ")} failed (exit ${code}):\n${stderr.trim()}`);
  const lines = stdout.trim().split("\n");
  return { ...(JSON.parse(lines[lines.length - 1]!) as IoResult), processPeakBytes: proc.resourceUsage()?.maxRSS ?? Number.NaN };
}

const ours = (job: OursJob) => child([process.execPath, import.meta.path, "--child", JSON.stringify(job)]);
const torch = (job: TorchJob) => child([PYTHON, join(import.meta.dir, "checkpoint_io_torch.py"), JSON.stringify(job)]);

export interface CheckpointIoOptions {
  shape: Shape;
  rounds: number;
  torch: boolean;
}

const SIDES = ["ours save", "torch.save", "torch.save + fsync", "ours load", "torch.load"] as const;
type Side = (typeof SIDES)[number];

export interface CheckpointIoResult {
  shape: Shape;
  fileBytes: number;
  runs: Partial<Record<Side, Measured[]>>;
}

export async function measureCheckpointIo(o: CheckpointIoOptions): Promise<CheckpointIoResult> {
  const dir = mkdtempSync(join(tmpdir(), "bench-ckpt-"));
  const oursFile = join(dir, "ours.pt");
  const torchFile = join(dir, "torch.pt");
  const runs: Partial<Record<Side, Measured[]>> = {};
  const add = (side: Side, m: Measured) => (runs[side] ??= []).push(m);
  try {
    const run: Record<Side, () => Promise<Measured>> = {
      "ours save": () => ours({ kind: "save", shape: o.shape.name, to: oursFile }),
      "torch.save": () => torch({ kind: "save", from: oursFile, to: torchFile, fsync: false }),
      "torch.save + fsync": () => torch({ kind: "save", from: oursFile, to: torchFile, fsync: true }),
      "ours load": () => ours({ kind: "load", shape: o.shape.name, from: oursFile }),
      "torch.load": () => torch({ kind: "load", from: oursFile }),
    };
    const sides = (list: Side[]) => list.filter((s) => o.torch || s.startsWith("ours"));
    for (let r = 0; r < o.rounds; r++) {
      process.stderr.write(`checkpoint I/O at ${o.shape.name}: round ${r + 1} of ${o.rounds} ...\n`);
      // The first write after other work is often slow here (the kernel reclaims pages for it):
      // odd rounds run the saves and the loads the other way round, so no side always goes
      // first (round 0 starts with ours: the others read the file it writes).
      const saves = sides(["ours save", "torch.save", "torch.save + fsync"]);
      const loads = sides(["ours load", "torch.load"]);
      if (r % 2 === 1) {
        saves.reverse();
        loads.reverse();
      }
      for (const side of [...saves, ...loads]) add(side, await run[side]());
    }
    return { shape: o.shape, fileBytes: statSync(oursFile).size, runs };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The run of the median time (of an even count, the slower middle one), as rounds.ts judges a side. */
function medianRun(ms: Measured[]): Measured {
  const t = middle(ms.map((m) => m.seconds));
  return ms.find((m) => m.seconds === t)!;
}

export function printCheckpointIo(res: CheckpointIoResult): void {
  const n = numParams(res.shape.cfg);
  const rounds = Math.max(...Object.values(res.runs).map((m) => m.length));
  console.log(
    `\nCheckpoint I/O at ${res.shape.name} (${fmt(n / 1e6, 2)}M parameters + both AdamW moments: a ${fmt(res.fileBytes / 2 ** 30, 2)} GiB file), ` +
      `median of ${rounds} interleaved round${rounds > 1 ? "s" : ""} (best / worst beside it); load average ${fmt(loadavg()[0]!, 2)} now`,
  );
  console.log("  added peak RSS: the peak during the call above the RSS before it (the model's buffers, or the state dict saved, not counted)");
  const rows = SIDES.filter((s) => res.runs[s]).map((side) => {
    const ms = res.runs[side]!;
    const med = medianRun(ms);
    const times = ms.map((m) => m.seconds);
    const added = Math.max(...ms.map((m) => m.addedPeakBytes));
    return [
      side === "ours save" ? "ours save (temp, fsync, rename)" : side === "ours load" ? "ours load (into the model)" : side,
      fmt(med.seconds, 2),
      fmt(Math.min(...times), 2),
      fmt(Math.max(...times), 2),
      fmt(res.fileBytes / 2 ** 20 / med.seconds),
      mb(added),
      pct(added / res.fileBytes),
      mb(Math.max(...ms.map((m) => m.processPeakBytes))),
    ];
  });
  console.log(table(["side", "time s", "best", "worst", "MB/s", "added peak RSS MB", "of file", "process peak MB"], rows));
  const t = (s: Side) => (res.runs[s] ? medianRun(res.runs[s]!).seconds : Number.NaN);
  const added = (s: Side) => Math.max(...(res.runs[s] ?? []).map((m) => m.addedPeakBytes)) / res.fileBytes;
  if (res.runs["torch.save"]) {
    console.log(
      `  save: ours / (torch.save + fsync) ${fmt(t("ours save") / t("torch.save + fsync"), 2)}x, ours / torch.save ${fmt(t("ours save") / t("torch.save"), 2)}x (target <= 1.0x); ` +
        `load: ours / torch.load ${fmt(t("ours load") / t("torch.load"), 2)}x (target <= 1.0x)`,
    );
  }
  console.log(
    `  added peak RSS, of the file: ours save ${pct(added("ours save"))}, load ${pct(added("ours load"))} (target <= 10%)` +
      (res.runs["torch.load"] ? `; torch.save ${pct(added("torch.save"))}, torch.load ${pct(added("torch.load"))}` : ""),
  );
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: { shape: { type: "string", default: "S4" }, rounds: { type: "string", default: "3" }, "no-torch": { type: "boolean", default: false }, child: { type: "string" } },
    strict: true,
  });
  if (values.child !== undefined) {
    console.log(JSON.stringify(runOursJob(JSON.parse(values.child) as OursJob)));
    return;
  }
  const rounds = Number(values.rounds);
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds: expected an integer >= 1, got "${values.rounds}"`);
  printCheckpointIo(await measureCheckpointIo({ shape: shapeNamed(values.shape!), rounds, torch: !values["no-torch"] }));
}

if (import.meta.main) {
  main().catch((e: unknown) => {
    console.error(`bench: ${(e as Error).message}`);
    process.exit(1);
  });
}
