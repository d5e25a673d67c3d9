/**
 * One phase (pretrain or sft) from start to finish: check the caches, decide where to
 * start (resume, init from a pretrain checkpoint, or fresh), open the native model, run
 * the loop, write checkpoints, metrics and the loss picture.
 */
import { existsSync, mkdirSync, readdirSync, unlinkSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { NativeModel, type Device, type NativeLibrary } from "../backend/native.ts";
import { describeFsError, FileWriteError } from "../checkpoint/atomic.ts";
import { loadCheckpoint, saveCheckpoint, type Checkpoint } from "../checkpoint/checkpoint.ts";
import { phaseOfTrainCfg, type PhaseConfig } from "../config.ts";
import { exitCodeOf, InputError } from "../errors.ts";
import { modelCfgDifferences, type ModelCfg } from "../model/config.ts";
import { initParams, paramLayout } from "../model/layout.ts";
import { writeLossSvg } from "./loss-svg.ts";
import { trainLoop, hparamsOf, DivergedError, type LoopMetrics, type SaveTargets } from "./loop.ts";
import { bestEval, MetricsLog, type MetricsPhase } from "./metrics.ts";
import { openPhaseData, type OpenedPhaseData } from "./phase-data.ts";
import { learningRate } from "./schedule.ts";
import { ProgressReporter, type ProgressStream } from "./progress.ts";
import type { StopSignal } from "./stop.ts";
import { formatSummary } from "./summary.ts";

export type ResumeRequest = { kind: "auto" } | { kind: "none" } | { kind: "path"; path: string };

export interface PhaseOptions {
  config: PhaseConfig;
  repoRoot: string;
  /** Where this phase's step_*.pt, latest.pt and best.pt go. */
  checkpointDir: string;
  /** Where metrics.jsonl and loss.svg go (shared by the phases of a pipeline). */
  runDir: string;
  resume: ResumeRequest;
  /** SFT starting from scratch: the weights to start from (optimizer fresh), or null. */
  initFrom: string | null;
  device: Device;
  library: NativeLibrary;
  out: ProgressStream;
  stop: StopSignal;
  /** Step where pretrain ended, for the loss picture of a pipeline's SFT. */
  pretrainEnd?: number;
}

export interface PhaseOutcome {
  step: number;
  bestValLoss: number | null;
  bestPath: string;
  alreadyFinished: boolean;
  /** The phase started from step 0 in this invocation (no checkpoint of its own resumed). */
  freshStart: boolean;
  firstValLoss: number | null;
}

function article(word: string): string {
  return `${/^[aeiou]|^sft/i.test(word) ? "an" : "a"} ${word}`;
}

function capitalize(s: string): string {
  return s[0]!.toUpperCase() + s.slice(1);
}

function show(repoRoot: string, path: string): string {
  const rel = relative(repoRoot, path);
  return rel.startsWith("..") ? path : rel;
}

/** Refuses a checkpoint of another phase or another model shape, naming what differs. */
function checkCompatible(ckpt: Checkpoint, path: string, o: ResumeOptions, what: string): void {
  const { config } = o;
  const phase = phaseOfTrainCfg(ckpt.trainCfg);
  if (phase !== config.phase) {
    throw new InputError(
      `${path}: ${what} is ${article(phase ?? "unknown-phase")} checkpoint, but this is the ${config.phase} phase. ` +
        `${capitalize(article(config.phase))} run never resumes another phase's checkpoint: pass --resume PATH with ${article(config.phase)} checkpoint, ` +
        `or --no-resume to start the ${config.phase} phase fresh (it then replaces the files in ${o.checkpointDir}).`,
    );
  }
  const diff = modelCfgDifferences(ckpt.modelCfg, config.model);
  if (diff.length > 0) {
    throw new InputError(
      `${path}: ${what} holds a model of another shape than ${config.modelCfgFile} (checkpoint vs config: ${diff.join(", ")}); ` +
        `use a matching model cfg, or --no-resume to start fresh`,
    );
  }
}

/** The --resume PATH of the command line (relative to REPO_ROOT, or absolute); it must exist. */
export function resumePathOf(repoRoot: string, path: string): string {
  const abs = resolve(repoRoot, path);
  if (!existsSync(abs)) throw new InputError(`--resume ${path}: no such checkpoint file (${abs})`);
  return abs;
}

/** Where to go when latest.pt cannot be read: the newest step_*.pt that loads, else a fresh start. */
function olderCheckpointHint(o: ResumeOptions): string {
  const steps = readdirSync(o.checkpointDir).filter((f) => /^step_\d+\.pt$/.test(f)).sort().reverse();
  for (const name of steps) {
    const path = join(o.checkpointDir, name);
    try {
      checkCompatible(loadCheckpoint(path), path, o, "");
      return `to resume from the newest intact checkpoint pass --resume ${show(o.repoRoot, path)}, or start fresh with --no-resume`;
    } catch {
      // torn or foreign as well: try an older one
    }
  }
  return "no step_*.pt beside it can be resumed instead: start fresh with --no-resume";
}

export type ResumeOptions = Pick<PhaseOptions, "config" | "repoRoot" | "checkpointDir" | "resume">;

/**
 * The checkpoint a phase resumes from (--resume PATH, or latest.pt unless --no-resume),
 * checked against the phase and model of the config; null: nothing to resume.
 */
export function resumeCheckpoint(o: ResumeOptions): { ckpt: Checkpoint; path: string } | null {
  if (o.resume.kind === "path") {
    const path = resumePathOf(o.repoRoot, o.resume.path);
    const ckpt = loadCheckpoint(path);
    checkCompatible(ckpt, path, o, "the --resume checkpoint");
    return { ckpt, path };
  }
  const latest = join(o.checkpointDir, "latest.pt");
  if (o.resume.kind === "none" || !existsSync(latest)) return null;
  let ckpt: Checkpoint;
  try {
    ckpt = loadCheckpoint(latest);
  } catch (e) {
    if (exitCodeOf(e) !== 2) throw e;
    throw new InputError(`${(e as Error).message}; ${olderCheckpointHint(o)}`);
  }
  checkCompatible(ckpt, latest, o, "the latest checkpoint");
  return { ckpt, path: latest };
}

interface Start {
  params: Float32Array;
  opt: Checkpoint["opt"];
  step: number;
  bestValLoss: number | null;
  from: string;
  /** The checkpoint file resumed from, or null (fresh weights or SFT's init_from). */
  resumedFrom: string | null;
}

function decideStart(o: PhaseOptions): Start {
  const { config } = o;
  const resumed = resumeCheckpoint(o);
  if (resumed !== null) {
    const { ckpt, path } = resumed;
    return { params: ckpt.params, opt: ckpt.opt, step: ckpt.step, bestValLoss: ckpt.bestValLoss, from: `resumed from ${show(o.repoRoot, path)} at step ${ckpt.step}`, resumedFrom: path };
  }
  if (o.initFrom !== null) {
    if (!existsSync(o.initFrom)) {
      throw new InputError(`${o.initFrom}: the checkpoint to start SFT from does not exist (init_from in ${config.file}); run the pretrain phase first or fix init_from`);
    }
    const ckpt = loadCheckpoint(o.initFrom);
    const diff = modelCfgDifferences(ckpt.modelCfg, config.model);
    if (diff.length > 0) {
      throw new InputError(`${o.initFrom}: its model differs from ${config.modelCfgFile} (checkpoint vs config: ${diff.join(", ")})`);
    }
    return { params: ckpt.params, opt: null, step: 0, bestValLoss: null, from: `weights from ${show(o.repoRoot, o.initFrom)} (step ${ckpt.step}), fresh optimizer`, resumedFrom: null };
  }
  return { params: initParams(config.model, config.train.seed), opt: null, step: 0, bestValLoss: null, from: `fresh GPT-2 init (seed ${config.train.seed})`, resumedFrom: null };
}

/** The first NaN / infinity of a flat buffer, named by its tensor and index, or null. */
function firstNonFinite(cfg: ModelCfg, what: string, values: Float32Array): string | null {
  for (let i = 0; i < values.length; i++) {
    if (Number.isFinite(values[i]!)) continue;
    const p = paramLayout(cfg).find((q) => i < q.offset + q.size)!;
    return `${what} ${p.name}[${i - p.offset}] is ${values[i]}`;
  }
  return null;
}

/** Temp files of atomic writes whose writer is gone (killed mid-write): `.<name>.<pid>.<n>.tmp`. */
function removeStaleTempFiles(dir: string, repoRoot: string, print: (line: string) => void): void {
  if (!existsSync(dir)) return;
  for (const name of readdirSync(dir)) {
    const pid = /^\..+?\.(\d+)(?:\.\d+){0,2}\.tmp$/.exec(name)?.[1];
    if (pid === undefined || Number(pid) === process.pid || processAlive(Number(pid))) continue;
    try {
      unlinkSync(join(dir, name));
      print(`removed ${show(repoRoot, join(dir, name))}, left by an interrupted write`);
    } catch {
      // another run removed it first, or the folder is read-only: the write itself will say
    }
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Runs a write to `path`; a failing file system becomes a FileWriteError naming the file. */
function writingTo<T>(path: string, write: () => T): T {
  try {
    return write();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (e instanceof FileWriteError || typeof code !== "string" || !code.startsWith("E")) throw e;
    throw new FileWriteError(`cannot write ${path}: ${describeFsError(e)}`, path, code, { cause: e });
  }
}

/**
 * A checkpoint is written only for sound weights: every value finite, and a finite loss
 * (this step's val loss, or the loss of one val batch). Else the run stops (exit 1) and
 * the files written before stay as they are.
 */
function assertSound(config: PhaseConfig, data: OpenedPhaseData, model: NativeModel, ckpt: Checkpoint, valLoss: number | null, intact: string): void {
  const m = config.model;
  let why =
    firstNonFinite(m, "weight", ckpt.params) ??
    (ckpt.opt && (firstNonFinite(m, "optimizer exp_avg", ckpt.opt.m) ?? firstNonFinite(m, "optimizer exp_avg_sq", ckpt.opt.v)));
  if (!why) {
    const batch = data.evalBatches[0]!;
    const loss = valLoss ?? model.evalLoss(batch.x, batch.y);
    if (!Number.isFinite(loss)) why = `${valLoss === null ? "the loss of the weights on a val batch" : "the val loss"} is ${loss}`;
  }
  if (why) {
    throw new DivergedError(
      `training diverged at step ${ckpt.step}: ${why}; no checkpoint was written at this step, ${intact}. ` +
        `Lower base_lr (or grad_clip) in the config and resume.`,
    );
  }
}

export async function runPhase(o: PhaseOptions): Promise<PhaseOutcome> {
  const { config } = o;
  const phase: MetricsPhase = config.phase;
  const bestPath = join(o.checkpointDir, "best.pt");
  const latestPath = join(o.checkpointDir, "latest.pt");
  const metricsPath = join(o.runDir, "metrics.jsonl");
  const data = openPhaseData(config, o.repoRoot); // validates every cache first: nothing is written before
  const start = decideStart(o);
  const print = (line: string) => o.out.write(`${line}\n`);

  if (start.step >= config.train.total_steps) {
    print(`${phase}: already finished (${start.from}; total_steps ${config.train.total_steps}): nothing to do`);
    return { step: start.step, bestValLoss: start.bestValLoss, bestPath, alreadyFinished: true, freshStart: false, firstValLoss: null };
  }

  // What a rerun of the same command resumes from, for the messages of a failed write.
  let onDisk = start.resumedFrom === null ? null : { path: start.resumedFrom, step: start.step };
  const intact = () => (onDisk === null ? "no checkpoint of this run is on disk yet" : `${show(o.repoRoot, onDisk.path)} (step ${onDisk.step}) is intact`);

  const model = NativeModel.open(config.model, config.train.B, o.device, o.library);
  try {
    model.setParams(start.params);
    if (start.opt) model.setOptState(start.opt.m, start.opt.v, start.opt.step);
    else model.setOptState(null, null, 0);

    writingTo(o.checkpointDir, () => mkdirSync(o.checkpointDir, { recursive: true }));
    for (const dir of new Set([o.checkpointDir, o.runDir])) removeStaleTempFiles(dir, o.repoRoot, print);
    const resumed = start.step > 0 || start.opt !== null;
    const metrics = writingTo(metricsPath, () =>
      MetricsLog.open(metricsPath, {
        phase,
        resumeStep: resumed ? start.step : null,
        dropPhases: !resumed && phase === "pretrain" ? ["sft"] : [],
      }),
    );
    const metricsOut: LoopMetrics = {
      appendTrain: (r) => writingTo(metricsPath, () => metrics.appendTrain(r)),
      appendEval: (r) => writingTo(metricsPath, () => metrics.appendEval(r)),
    };
    const lastEval = metrics.lastEval(phase);
    const reporter = new ProgressReporter({
      phase,
      totalSteps: config.train.total_steps,
      startStep: start.step,
      lastValLoss: resumed ? (lastEval?.val_loss ?? null) : null,
      logEvery: config.train.log_every,
      out: o.out,
    });
    reporter.print(
      `${phase}: ${start.from}; model V=${config.model.V} T=${config.model.T} C=${config.model.C} L=${config.model.L} H=${config.model.H} d_ff=${config.model.d_ff} ` +
        `(${(model.numParams / 1e6).toFixed(2)}M params), B=${config.train.B}, device ${o.device}, steps ${start.step}..${config.train.total_steps}`,
    );

    // The val loss before training, so a run shows what it learned (step 0 of the picture).
    const firstValLoss = resumed ? null : data.evalLoss(model);
    if (firstValLoss !== null) {
      metricsOut.appendEval({ step: 0, lr: null, val_loss: firstValLoss });
      reporter.print(`${phase}: val loss before training ${firstValLoss.toFixed(4)} (ln V = ${Math.log(config.model.V).toFixed(4)})`);
    }

    const save = (step: number, bestValLoss: number | null, targets: SaveTargets, valLoss: number | null): string[] => {
      const ckpt: Checkpoint = {
        modelCfg: config.modelCfgRaw,
        trainCfg: config.raw,
        params: model.getParams(),
        // param_groups' lr is the lr of the last step taken, as torch's scheduler leaves it
        opt: { ...model.getOptState(), hparams: hparamsOf(config.train, learningRate(Math.max(0, step - 1), config.train)) },
        step,
        bestValLoss,
      };
      assertSound(config, data, model, ckpt, valLoss, intact());
      const files: string[] = [];
      if (targets.best) files.push(bestPath);
      if (targets.periodic) files.push(join(o.checkpointDir, `step_${String(step).padStart(7, "0")}.pt`));
      if (targets.periodic || targets.latestOnly) files.push(latestPath);
      saveCheckpoint(files, ckpt);
      if (files.includes(latestPath)) onDisk = { path: latestPath, step };
      return files.map((f) => show(o.repoRoot, f));
    };
    const svgPath = join(o.runDir, "loss.svg");
    const redraw = (bestStep: number | null) =>
      writingTo(svgPath, () =>
        writeLossSvg(svgPath, metrics.records(), {
          pretrainEnd: o.pretrainEnd,
          title: "train: loss",
          bestStep: bestStep === null ? {} : { [phase]: bestStep },
        }),
      );

    try {
      const result = await trainLoop({
        model,
        train: config.train,
        data,
        startStep: start.step,
        bestValLoss: start.bestValLoss,
        reporter,
        metrics: metricsOut,
        stop: o.stop,
        save,
        afterEval: redraw,
      });
      reporter.finish();
      const files = [
        ["best checkpoint", bestPath],
        ["latest checkpoint", latestPath],
        ["metrics", metricsPath],
        ["loss curve", svgPath],
      ].map(([label, path]) => ({ label: label!, path: show(o.repoRoot, path!) }));
      o.out.write(
        formatSummary({
          phases: [
            {
              phase,
              startStep: start.step,
              endStep: result.step,
              totalSteps: config.train.total_steps,
              bestValLoss: result.bestValLoss,
              bestStep: result.bestStep ?? bestEval(metrics.records(), phase)?.step ?? null,
              lastValLoss: reporter.lastValLoss,
              tokensPerStep: config.train.B * config.model.T,
              session: reporter.stats(),
            },
          ],
          wallTimeS: metrics.wallTimeS(),
          files,
        }),
      );
      return { step: result.step, bestValLoss: result.bestValLoss, bestPath, alreadyFinished: false, freshStart: !resumed, firstValLoss };
    } finally {
      reporter.finish();
    }
  } catch (e) {
    if (!(e instanceof FileWriteError)) throw e;
    throw new FileWriteError(`${e.message}. Training stopped; ${intact()}: fix the cause and run the same command again`, e.path, e.code, { cause: e });
  } finally {
    model.close();
  }
}
