/**
 * One phase (pretrain or sft) from start to finish: check the caches, decide where to
 * start (start.ts), open the native model, run the loop (loop.ts), write checkpoints
 * (only of sound weights), metrics and the loss picture.
 */
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { NativeModel, type Device, type NativeLibrary } from "../backend/native.ts";
import { FileWriteError, removeStaleTempFiles, writingTo } from "../util/atomic.ts";
import { saveCheckpoint, type Checkpoint } from "../checkpoint/checkpoint.ts";
import { withRecordedDefaults, type PhaseConfig } from "../config.ts";
import type { ModelCfg } from "../model/config.ts";
import { paramLayout } from "../model/layout.ts";
import { writeLossSvg } from "./loss-svg.ts";
import { trainLoop, hparamsOf, DivergedError, type LoopMetrics, type SaveTargets } from "./loop.ts";
import { bestEval, MetricsLog, type MetricsPhase } from "./metrics.ts";
import { openPhaseData, type OpenedPhaseData } from "./phase-data.ts";
import { learningRate } from "./schedule.ts";
import { ProgressPrinter, type ProgressStream } from "./progress.ts";
import { TrainStats } from "./stats.ts";
import type { StopSignal } from "./stop.ts";
import { decideStart, show, type ResumeRequest, type Start } from "./start.ts";
import { formatSummary } from "./summary.ts";

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
  /** The version line of the build (src/version.ts), recorded in metrics.jsonl. */
  build: string;
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

/** The first NaN / infinity of a flat buffer, named by its tensor and index, or null. */
function firstNonFinite(cfg: ModelCfg, what: string, values: Float32Array): string | null {
  for (let i = 0; i < values.length; i++) {
    if (Number.isFinite(values[i]!)) continue;
    const p = paramLayout(cfg).find((q) => i < q.offset + q.size)!;
    return `${what} ${p.name}[${i - p.offset}] is ${values[i]}`;
  }
  return null;
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

/** The data a phase reads, for its start line: "mixture wiki 0.784 + ... (default), val wiki". */
export function describeData(config: PhaseConfig): string {
  const mix = Object.entries(config.sources)
    .map(([source, p]) => `${source} ${Number(p.toFixed(4))}`)
    .join(" + ");
  const tag = (omitted: boolean) => (omitted ? " (default)" : "");
  const d = config.defaulted;
  return `mixture ${mix}${tag(d.sources !== undefined)}, val ${config.valSource}${tag(d.val_source !== undefined)}`;
}

/** Copies the start's weights (and moments) into the model, then lets them go: at GPT-2
 * small they are 0.5 GB (1.5 GB with the moments) that would otherwise stay resident
 * beside the model's own copy for the whole run. */
function handOver(model: NativeModel, start: Start): void {
  model.setParams(start.params);
  if (start.opt) model.setOptState(start.opt.m, start.opt.v, start.opt.step);
  else model.setOptState(null, null, 0);
  start.params = new Float32Array(0);
  start.opt = null;
  Bun.gc(true);
}

export async function runPhase(o: PhaseOptions): Promise<PhaseOutcome> {
  const phase: MetricsPhase = o.config.phase;
  const bestPath = join(o.checkpointDir, "best.pt");
  const latestPath = join(o.checkpointDir, "latest.pt");
  const metricsPath = join(o.runDir, "metrics.jsonl");
  // Everything is read and checked before anything is written; a signal meanwhile ends the run at once.
  const load = <T>(read: () => T): T => (o.stop.withDefaultAction ? o.stop.withDefaultAction(read) : read());
  let data = load(() => openPhaseData(o.config, o.repoRoot));
  const start = load(() => decideStart(o));
  const print = (line: string) => o.out.write(`${line}\n`);
  // A resume continues with the defaults its run started with (a later version may have changed one).
  let config = o.config;
  if (start.trainDefaults !== null) {
    const continued = withRecordedDefaults(o.config, start.trainDefaults, show(o.repoRoot, start.resumedFrom!));
    config = continued.config;
    const dataOf = (c: PhaseConfig) => JSON.stringify([c.sources, c.valSource, c.train.B, c.train.seed, c.train.eval_batches]);
    if (dataOf(config) !== dataOf(o.config)) data = openPhaseData(config, o.repoRoot);
    if (continued.kept.length > 0) print(`${phase}: continues with the defaults this run started with: ${continued.kept.join(", ")}`);
  }

  if (start.step >= config.train.total_steps) {
    print(`${phase}: already finished (${start.from}; total_steps ${config.train.total_steps}): nothing to do`);
    return { step: start.step, bestValLoss: start.bestValLoss, bestPath, alreadyFinished: true, freshStart: false, firstValLoss: null };
  }

  // What a rerun of the same command resumes from, for the messages of a failed write.
  let onDisk = start.resumedFrom === null ? null : { path: start.resumedFrom, step: start.step };
  // Files of a newer step written before a later write of the same save failed (latest.pt is written last).
  let newerWritten: { paths: string[]; step: number } | null = null;
  const intact = () => (onDisk === null ? "no checkpoint of this run is on disk yet" : `${show(o.repoRoot, onDisk.path)} (step ${onDisk.step}) is intact`);
  /** What a failed write leaves and how to go on, for its message. */
  const howToGoOn = () => {
    const stepFile = newerWritten?.paths.find((p) => p !== bestPath);
    if (newerWritten === null || newerWritten.paths.length === 0) return `${intact()}: fix the cause and run the same command again`;
    const written = `${newerWritten.paths.map((p) => show(o.repoRoot, p)).join(" and ")} (step ${newerWritten.step}) ${newerWritten.paths.length > 1 ? "were" : "was"} written before it`;
    const resume = stepFile ? `; to go on from step ${newerWritten.step} fix the cause and run the same command with --resume ${show(o.repoRoot, stepFile)}` : "";
    return `${onDisk === null ? "" : `${intact()}; `}${written}${resume || ": fix the cause and run the same command again"}`;
  };

  const resumed = start.step > 0 || start.opt !== null;
  const model = NativeModel.open(config.model, config.train.B, o.device, o.library);
  try {
    handOver(model, start);

    writingTo(o.checkpointDir, () => mkdirSync(o.checkpointDir, { recursive: true }));
    for (const dir of new Set([o.checkpointDir, o.runDir])) {
      for (const path of removeStaleTempFiles(dir)) print(`removed ${show(o.repoRoot, path)}, left by an interrupted write`);
    }
    const metrics = writingTo(metricsPath, () =>
      MetricsLog.open(metricsPath, {
        phase,
        resumeStep: resumed ? start.step : null,
        dropPhases: !resumed && phase === "pretrain" ? ["sft"] : [],
        build: o.build,
      }),
    );
    const metricsOut: LoopMetrics = {
      appendStep: (r) => metrics.appendStep(r),
      appendTrain: (r) => writingTo(metricsPath, () => metrics.appendTrain(r)),
      appendEval: (r) => writingTo(metricsPath, () => metrics.appendEval(r)),
    };
    const flushMetrics = () => writingTo(metricsPath, () => metrics.flush());
    const lastEval = metrics.lastEval(phase);
    const stats = new TrainStats({
      totalSteps: config.train.total_steps,
      startStep: start.step,
      lastValLoss: resumed ? (lastEval?.val_loss ?? null) : null,
      logEvery: config.train.log_every,
    });
    stats.restoreWindow(metrics.unloggedSteps().map((r) => ({ step: r.step, loss: r.train_loss })));
    const printer = new ProgressPrinter({ phase, stats, out: o.out });
    printer.print(
      `${phase}: ${start.from}; model V=${config.model.V} T=${config.model.T} C=${config.model.C} L=${config.model.L} H=${config.model.H} d_ff=${config.model.d_ff} ` +
        `(${(model.numParams / 1e6).toFixed(2)}M params), B=${config.train.B}, ${describeData(config)}, device ${o.device}, steps ${start.step}..${config.train.total_steps}`,
    );

    // The val loss before training, so a run shows what it learned (step 0 of the picture).
    const firstValLoss = resumed ? null : data.evalLoss(model);
    if (firstValLoss !== null) {
      metricsOut.appendEval({ step: 0, lr: null, val_loss: firstValLoss });
      printer.print(`${phase}: val loss before training ${firstValLoss.toFixed(4)} (ln V = ${Math.log(config.model.V).toFixed(4)})`);
    }

    const save = (step: number, bestValLoss: number | null, targets: SaveTargets, valLoss: number | null): string[] => {
      flushMetrics(); // the records of the steps up to this one are on disk before their checkpoint
      const ckpt: Checkpoint = {
        modelCfg: config.modelCfgRaw,
        trainCfg: config.raw,
        params: model.getParams(),
        // param_groups' lr is the lr of the last step taken, as torch's scheduler leaves it
        opt: { ...model.getOptState(), hparams: hparamsOf(config.train, learningRate(Math.max(0, step - 1), config.train)), trainDefaults: config.defaulted },
        step,
        bestValLoss,
      };
      assertSound(config, data, model, ckpt, valLoss, intact());
      const files: string[] = [];
      if (targets.best) files.push(bestPath);
      if (targets.periodic) files.push(join(o.checkpointDir, `step_${String(step).padStart(7, "0")}.pt`));
      if (targets.periodic || targets.latestOnly) files.push(latestPath);
      const written: string[] = [];
      newerWritten = { paths: written, step };
      for (const file of files) {
        saveCheckpoint(file, ckpt);
        if (file === latestPath) onDisk = { path: latestPath, step };
        else written.push(file);
      }
      newerWritten = null;
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
        stats,
        printer,
        metrics: metricsOut,
        stop: o.stop,
        save,
        afterEval: redraw,
      });
      printer.finish();
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
              lastValLoss: stats.lastValLoss,
              tokensPerStep: config.train.B * config.model.T,
              session: stats.session(),
            },
          ],
          wallTimeS: metrics.wallTimeS(),
          files,
        }),
      );
      return { step: result.step, bestValLoss: result.bestValLoss, bestPath, alreadyFinished: false, freshStart: !resumed, firstValLoss };
    } finally {
      printer.finish();
      // Only when the loop failed is anything still buffered (its last step is always logged):
      // the losses since the last save (before a divergence, say) stay for the reader, a resume
      // drops them. The loop's own error is the one reported.
      try {
        metrics.flush();
      } catch {}
    }
  } catch (e) {
    if (!(e instanceof FileWriteError)) throw e;
    throw new FileWriteError(`${e.message}. Training stopped; ${howToGoOn()}`, e.path, e.code, { cause: e });
  } finally {
    model.close();
  }
}
