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
import { SFTExampleDataset } from "../data/sft.ts";
import { StreamDataset } from "../data/stream.ts";
import { evaluate, type PhaseData } from "./loop.ts";

export interface OpenedPhaseData extends PhaseData {
  /** Mean loss of the model on the eval batches. */
  evalLoss(model: NativeModel): number;
}

/** SFT batches train on y_masked: the targets outside assistant answers are -100. */
function maskedBatch(b: { x: Int32Array; yMasked: Int32Array }): Batch {
  return { x: b.x, y: b.yMasked };
}

function copyBatch(b: Batch): Batch {
  return { x: b.x.slice(), y: b.y.slice() };
}

export function openPhaseData(config: PhaseConfig, repoRoot: string): OpenedPhaseData {
  const root = join(repoRoot, DEFAULT_CACHE_ROOT);
  const { B, seed, eval_batches } = config.train;
  const { T, V } = config.model;
  assertCachesPresent(root, { phase: config.phase, sources: config.sources, valSource: config.valSource });

  const trainOptions = { B, T, seed, modelV: V, rngStream: RNG_STREAM.train };
  const evalOptions = { ...trainOptions, rngStream: RNG_STREAM.eval };
  let trainBatch: (step: number) => Batch;
  if (config.phase === "pretrain") {
    const ds = StreamDataset.open(root, config.sources, "train", trainOptions);
    trainBatch = (step) => ds.getBatch(step);
  } else {
    const ds = SFTExampleDataset.open(root, config.sources, "train", trainOptions);
    trainBatch = (step) => maskedBatch(ds.getBatch(step));
  }

  let evalBatch: (i: number) => Batch;
  if (config.valSource === "sft") {
    const ds = SFTExampleDataset.open(root, config.sources, "val", evalOptions);
    evalBatch = (i) => maskedBatch(ds.getBatch(i));
  } else {
    const ds = StreamDataset.open(root, { [config.valSource]: 1 }, "val", evalOptions);
    evalBatch = (i) => ds.getBatch(i);
  }
  // The datasets reuse their buffers, so the fixed eval batches are copied once.
  const evalBatches = Array.from({ length: eval_batches }, (_, i) => copyBatch(evalBatch(i)));
  return { trainBatch, evalBatches, evalLoss: (model) => evaluate(model, evalBatches) };
}
