/**
 * The training loop of one phase, as the spec's "training loop behavior" reads:
 * sample batch -> forward/backward/clip/AdamW (one native call) -> lr schedule ->
 * eval every eval_every (and at the last step) -> checkpoints every ckpt_every
 * (and at the last step), best.pt whenever an eval improves the best val loss.
 *
 * Steps count completed updates: after the loop body for step s, `step` is s+1, the
 * number a checkpoint written then carries (step_{step:07d}.pt).
 *
 * A stop request (first Ctrl-C / SIGTERM / SIGHUP) is honoured between steps: latest.pt is written
 * unless it already holds this step, then Interrupted is thrown. Whether the weights are
 * sound enough to be written is the save's decision (it gets this step's val loss).
 */
import type { HParams, NativeModel } from "../backend/native.ts";
import type { TrainCfg } from "../config.ts";
import { Interrupted } from "../errors.ts";
import type { MetricsLog } from "./metrics.ts";
import type { ProgressPrinter } from "./progress.ts";
import { learningRate } from "./schedule.ts";
import type { TrainStats } from "./stats.ts";
import type { StopSignal } from "./stop.ts";

export interface Batch {
  x: Int32Array; // (B, T) inputs
  y: Int32Array; // (B, T) targets, -100 = ignored
}

export interface PhaseData {
  /** The batch of a step: a pure function of (seed, step). */
  trainBatch(step: number): Batch;
  /** The fixed eval batches of the run. */
  evalBatches: readonly Batch[];
}

/** Which files a save writes: the periodic pair (step_*.pt, latest.pt) and/or best.pt. */
export interface SaveTargets {
  periodic: boolean;
  best: boolean;
  latestOnly?: boolean; // an interrupted run saves latest.pt alone
}

/** Where the loop's step, train and eval records go (a MetricsLog). */
export type LoopMetrics = Pick<MetricsLog, "appendStep" | "appendTrain" | "appendEval">;

export interface LoopContext {
  model: NativeModel;
  train: TrainCfg;
  data: PhaseData;
  startStep: number;
  bestValLoss: number | null;
  /** The phase's statistics: the loop records each step, eval and save in them. */
  stats: TrainStats;
  /** Prints what the loop and its statistics report. */
  printer: ProgressPrinter;
  metrics: LoopMetrics;
  stop: StopSignal;
  /**
   * Writes the checkpoint files of `step` (after writing out the metrics records buffered so
   * far: metrics.ts); returns the paths written. valLoss: the eval of this step, if one ran
   * (else the save measures the weights itself).
   */
  save(step: number, bestValLoss: number | null, targets: SaveTargets, valLoss: number | null): string[];
  /** Called after each eval (the loss picture is redrawn there), with the best step if known. */
  afterEval?(bestStep: number | null): void;
}

export interface LoopResult {
  step: number;
  bestValLoss: number | null;
  bestStep: number | null;
}

/** Non-finite steps in a row reached max_nonfinite_steps: the run stops (exit 1). */
export class DivergedError extends Error {
  override name = "DivergedError";
}

export function hparamsOf(train: TrainCfg, lr: number): HParams {
  return {
    lr,
    weightDecay: train.weight_decay,
    beta1: train.beta1,
    beta2: train.beta2,
    eps: train.eps,
    gradClip: train.grad_clip,
  };
}

/** Mean loss over the fixed eval batches. */
export function evaluate(model: NativeModel, batches: readonly Batch[]): number {
  let sum = 0;
  for (const b of batches) sum += model.evalLoss(b.x, b.y);
  return sum / batches.length;
}

/** Lets signal handlers run between two synchronous native steps. */
function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

export async function trainLoop(ctx: LoopContext): Promise<LoopResult> {
  const { model, train, data, stats, printer, metrics, stop } = ctx;
  const tokensPerStep = model.batchSize * model.cfg.T;
  let step = ctx.startStep;
  let bestValLoss = ctx.bestValLoss;
  let bestStep: number | null = null;
  let nonFiniteInARow = 0;
  let savedStep = ctx.startStep; // the last step on disk (the start's state can be recreated)

  while (step < train.total_steps) {
    if (stop.requested) {
      const saved =
        step === savedStep
          ? `nothing new to save since step ${step}`
          : `saved ${ctx.save(step, bestValLoss, { periodic: false, best: false, latestOnly: true }, null).join(", ")}`;
      printer.print(`${stop.requested}: stopped after step ${step}, ${saved}`);
      throw new Interrupted(stop.requested, `interrupted by ${stop.requested} at step ${step}; resume with the same command`);
    }
    const lr = learningRate(step, train);
    const { x, y } = data.trainBatch(step);
    const result = model.trainStep(x, y, hparamsOf(train, lr));
    step++;

    if (!result.applied) {
      nonFiniteInARow++;
      stats.notApplied(tokensPerStep, result.nTargets);
      const which = Number.isFinite(result.loss) ? `gradient norm ${result.gradNorm}` : `loss ${result.loss}`;
      printer.print(
        `step ${step}: non-finite ${which} at lr ${lr.toExponential(3)}: update skipped (${nonFiniteInARow} in a row, limit ${train.max_nonfinite_steps})`,
      );
      if (nonFiniteInARow >= train.max_nonfinite_steps) {
        throw new DivergedError(
          `training diverged: ${nonFiniteInARow} steps in a row with a non-finite ${which} (last at step ${step}, lr ${lr.toExponential(3)}); ` +
            `no update was applied, the last checkpoint is intact. Lower base_lr or grad_clip in the config and resume.`,
        );
      }
    } else {
      nonFiniteInARow = 0;
      const logged = stats.step({ step, loss: result.loss, lr, tokens: tokensPerStep, targets: result.nTargets });
      printer.step(logged);
      metrics.appendStep({ step, lr, loss: result.loss });
      if (logged) metrics.appendTrain(logged.log);
    }

    const last = step === train.total_steps;
    let improved = false;
    let valLoss: number | null = null;
    if (step % train.eval_every === 0 || last) {
      printer.activity("eval");
      const t0 = performance.now();
      valLoss = evaluate(model, data.evalBatches);
      improved = Number.isFinite(valLoss) && (bestValLoss === null || valLoss < bestValLoss);
      if (improved) {
        bestValLoss = valLoss;
        bestStep = step;
      }
      metrics.appendEval({ step, lr, val_loss: valLoss });
      stats.evaluated(valLoss);
      printer.eval({ step, valLoss, best: bestValLoss ?? valLoss, improved, seconds: (performance.now() - t0) / 1000 });
      ctx.afterEval?.(bestStep);
    }
    const periodic = step % train.ckpt_every === 0 || last;
    if (periodic || improved) {
      printer.activity("saving");
      printer.checkpoint({ step, paths: ctx.save(step, bestValLoss, { periodic, best: improved }, valLoss) });
      stats.paused();
      if (periodic) savedStep = step;
    }
    await yieldToEventLoop();
  }
  return { step, bestValLoss, bestStep };
}
