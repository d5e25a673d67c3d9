/**
 * One phase (pretrain or sft) from start to finish: check the caches, decide where to
 * start (resume, init from a pretrain checkpoint, or fresh), open the native model, run
 * the loop, write checkpoints, metrics and the loss picture.
 */
import { existsSync, mkdirSync } from "node:fs";
import { join, relative } from "node:path";
import { NativeModel, type Device, type NativeLibrary } from "../backend/native.ts";
import { loadCheckpoint, saveCheckpoint, type Checkpoint } from "../checkpoint/checkpoint.ts";
import { phaseOfTrainCfg, type PhaseConfig } from "../config.ts";
import { InputError } from "../errors.ts";
import { modelCfgDifferences } from "../model/config.ts";
import { initParams } from "../model/layout.ts";
import { writeLossSvg } from "./loss-svg.ts";
import { trainLoop, hparamsOf, type SaveTargets } from "./loop.ts";
import { bestEval, MetricsLog, type MetricsPhase } from "./metrics.ts";
import { openPhaseData } from "./phase-data.ts";
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
function checkCompatible(ckpt: Checkpoint, path: string, config: PhaseConfig, what: string): void {
  const phase = phaseOfTrainCfg(ckpt.trainCfg);
  if (phase !== config.phase) {
    throw new InputError(
      `${path}: ${what} is ${article(phase ?? "unknown-phase")} checkpoint, but this is the ${config.phase} phase. ` +
        `${capitalize(article(config.phase))} run never resumes another phase's checkpoint: pass --resume PATH with ${article(config.phase)} checkpoint, ` +
        `or --no-resume to start the ${config.phase} phase fresh (it then replaces the files in ${join(path, "..")}).`,
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

interface Start {
  params: Float32Array;
  opt: Checkpoint["opt"];
  step: number;
  bestValLoss: number | null;
  from: string;
}

function decideStart(o: PhaseOptions): Start {
  const { config } = o;
  const latest = join(o.checkpointDir, "latest.pt");
  let resumePath: string | null = null;
  if (o.resume.kind === "path") {
    resumePath = join(o.repoRoot, o.resume.path);
    if (!existsSync(resumePath)) throw new InputError(`--resume ${o.resume.path}: no such checkpoint file (${resumePath})`);
  } else if (o.resume.kind === "auto" && existsSync(latest)) {
    resumePath = latest;
  }
  if (resumePath !== null) {
    const ckpt = loadCheckpoint(resumePath, config.model);
    checkCompatible(ckpt, resumePath, config, o.resume.kind === "path" ? "the --resume checkpoint" : "the latest checkpoint");
    return { params: ckpt.params, opt: ckpt.opt, step: ckpt.step, bestValLoss: ckpt.bestValLoss, from: `resumed from ${show(o.repoRoot, resumePath)} at step ${ckpt.step}` };
  }
  if (o.initFrom !== null) {
    if (!existsSync(o.initFrom)) {
      throw new InputError(`${o.initFrom}: the checkpoint to start SFT from does not exist (init_from in ${config.file}); run the pretrain phase first or fix init_from`);
    }
    const ckpt = loadCheckpoint(o.initFrom, config.model);
    const diff = modelCfgDifferences(ckpt.modelCfg, config.model);
    if (diff.length > 0) {
      throw new InputError(`${o.initFrom}: its model differs from ${config.modelCfgFile} (checkpoint vs config: ${diff.join(", ")})`);
    }
    return { params: ckpt.params, opt: null, step: 0, bestValLoss: null, from: `weights from ${show(o.repoRoot, o.initFrom)} (step ${ckpt.step}), fresh optimizer` };
  }
  return { params: initParams(config.model, config.train.seed), opt: null, step: 0, bestValLoss: null, from: `fresh GPT-2 init (seed ${config.train.seed})` };
}

export async function runPhase(o: PhaseOptions): Promise<PhaseOutcome> {
  const { config } = o;
  const phase: MetricsPhase = config.phase;
  const bestPath = join(o.checkpointDir, "best.pt");
  const data = openPhaseData(config, o.repoRoot); // validates every cache first: nothing is written before
  const start = decideStart(o);
  const print = (line: string) => o.out.write(`${line}\n`);

  if (start.step >= config.train.total_steps) {
    print(`${phase}: already finished (${start.from}; total_steps ${config.train.total_steps}): nothing to do`);
    return { step: start.step, bestValLoss: start.bestValLoss, bestPath, alreadyFinished: true, firstValLoss: null };
  }

  const model = NativeModel.open(config.model, config.train.B, o.device, o.library);
  try {
    model.setParams(start.params);
    if (start.opt) model.setOptState(start.opt.m, start.opt.v, start.opt.step);
    else model.setOptState(null, null, 0);

    mkdirSync(o.checkpointDir, { recursive: true });
    const resumed = start.step > 0 || start.opt !== null;
    const metrics = MetricsLog.open(join(o.runDir, "metrics.jsonl"), {
      phase,
      resumeStep: resumed ? start.step : null,
      dropPhases: !resumed && phase === "pretrain" ? ["sft"] : [],
    });
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
      metrics.appendEval({ step: 0, lr: null, val_loss: firstValLoss });
      reporter.print(`${phase}: val loss before training ${firstValLoss.toFixed(4)} (ln V = ${Math.log(config.model.V).toFixed(4)})`);
    }

    const save = (step: number, bestValLoss: number | null, targets: SaveTargets): string[] => {
      const ckpt: Checkpoint = {
        modelCfg: config.modelCfgRaw,
        trainCfg: config.raw,
        params: model.getParams(),
        // param_groups' lr is the lr of the last step taken, as torch's scheduler leaves it
        opt: { ...model.getOptState(), hparams: hparamsOf(config.train, learningRate(Math.max(0, step - 1), config.train)) },
        step,
        bestValLoss,
      };
      const files: string[] = [];
      if (targets.best) files.push(bestPath);
      if (targets.periodic) files.push(join(o.checkpointDir, `step_${String(step).padStart(7, "0")}.pt`));
      if (targets.periodic || targets.latestOnly) files.push(join(o.checkpointDir, "latest.pt"));
      saveCheckpoint(files, ckpt);
      return files.map((f) => show(o.repoRoot, f));
    };
    const redraw = (bestStep: number | null) =>
      writeLossSvg(join(o.runDir, "loss.svg"), metrics.records(), {
        pretrainEnd: o.pretrainEnd,
        title: "train: loss",
        bestStep: bestStep === null ? {} : { [phase]: bestStep },
      });

    try {
      const result = await trainLoop({
        model,
        train: config.train,
        data,
        startStep: start.step,
        bestValLoss: start.bestValLoss,
        reporter,
        metrics,
        stop: o.stop,
        save,
        afterEval: redraw,
      });
      reporter.finish();
      const files = [
        ["best checkpoint", bestPath],
        ["latest checkpoint", join(o.checkpointDir, "latest.pt")],
        ["metrics", join(o.runDir, "metrics.jsonl")],
        ["loss curve", join(o.runDir, "loss.svg")],
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
      return { step: result.step, bestValLoss: result.bestValLoss, bestPath, alreadyFinished: false, firstValLoss };
    } finally {
      reporter.finish();
    }
  } finally {
    model.close();
  }
}
