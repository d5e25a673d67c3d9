/**
 * The data of a phase, from its config: the training batches (stream windows for
 * pretrain, masked SFT examples for sft) and the fixed eval batches of its val source.
 * Every cache is checked for presence (all missing paths at once) and validated on open,
 * before anything is written.
 */
import { join } from "node:path";
import type { NativeModel } from "../backend/native.ts";
import type { PhaseConfig } from "../config.ts";
import type { Batch } from "../data/dataset.ts";
import { assertCachesPresent, DEFAULT_CACHE_ROOT } from "../data/paths.ts";
import { RNG_STREAM } from "../util/random.ts";
import { evalBatches } from "../data/eval.ts";
import { SFTExampleDataset } from "../data/sft.ts";
import { sftStartLines } from "../data/sft-report.ts";
import { StreamDataset } from "../data/stream.ts";
import { evaluate, type PhaseData } from "./loop.ts";

export interface OpenedPhaseData extends PhaseData {
  /** Mean loss of the model on the eval batches. */
  evalLoss(model: NativeModel): number;
  /** Counted targets of the training batches of steps [0, step) (a resumed run's count so far). */
  targetsBefore(step: number): number;
  /** What the run prints about its data before it starts (SFT: sft-report.ts), and warnings. */
  startLines: string[];
}

export function openPhaseData(config: PhaseConfig, repoRoot: string): OpenedPhaseData {
  const root = join(repoRoot, DEFAULT_CACHE_ROOT);
  const { B, seed, eval_batches } = config.train;
  const { T, V } = config.model;
  const spec = { phase: config.phase, sources: config.sources, valSource: config.valSource };
  assertCachesPresent(root, spec);

  const trainOptions = { B, T, seed, modelV: V, rngStream: RNG_STREAM.train };
  let trainBatch: (step: number) => Batch;
  let targetsBefore = (step: number) => step * B * T; // pretrain: every target counts
  const startLines: string[] = [];
  const longExamples = config.phase === "sft" ? config.longExamples : undefined;
  if (config.phase === "pretrain") {
    const ds = StreamDataset.open(root, config.sources, "train", trainOptions);
    trainBatch = (step) => ds.getBatch(step);
  } else {
    // SFT trains on y_masked: the targets outside assistant answers are -100
    const ds = SFTExampleDataset.open(root, config.sources, "train", { ...trainOptions, longExamples });
    trainBatch = (step) => {
      const b = ds.getBatch(step);
      return { x: b.x, y: b.yMasked };
    };
    targetsBefore = (step) => ds.targetsBefore(step);
    const { lines, warnings } = sftStartLines(ds.stats, T, ds.longExamples);
    startLines.push(...lines, ...warnings);
  }
  const fixedEval = evalBatches({ root, spec, B, T, seed, modelV: V, count: eval_batches, longExamples });
  return { trainBatch, evalBatches: fixedEval, evalLoss: (model) => evaluate(model, fixedEval), targetsBefore, startLines };
}
