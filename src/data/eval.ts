/**
 * The fixed eval batches of a run: `count` batches drawn from the validation caches on
 * the eval RNG stream, so they depend on the seed only (not on the step, not on resume)
 * and never share draws with training batches.
 *   val_source wiki|roam|primer: windows of <source>_val, plain next-token targets;
 *   val_source "sft": examples of the SFT mixture's <source>_val caches, masked targets.
 */
import type { DatasetOptions } from "./dataset.ts";
import { DataError } from "./errors.ts";
import type { LongExampleRule } from "./long-examples.ts";
import { mixtureOf, type PhaseDataSpec, STREAM_SOURCES } from "./paths.ts";
import { RNG_STREAM } from "../util/random.ts";
import { SFTExampleDataset } from "./sft.ts";
import { StreamDataset } from "./stream.ts";

export interface EvalBatch {
  x: Int32Array;
  /** Targets of the loss: plain for a stream source, masked (-100 = ignore) for "sft". */
  y: Int32Array;
  /** Counted targets in y. */
  nTargets: number;
}

export interface EvalOptions {
  /** Cache root, e.g. data/cache. */
  root: string;
  /** The phase's data: valSource and (for "sft") the SFT mixture. */
  spec: PhaseDataSpec;
  B: number;
  T: number;
  seed: number;
  modelV: number;
  /** eval_batches of the config. */
  count: number;
  /** The rule for SFT examples longer than T+1 (val_source "sft"). */
  longExamples?: LongExampleRule;
}

/** Builds the eval batches (fresh arrays, kept for the whole run). */
export function evalBatches(opts: EvalOptions): EvalBatch[] {
  if (!Number.isSafeInteger(opts.count) || opts.count < 1) {
    throw new DataError(`eval_batches=${opts.count}, expected an integer >= 1`);
  }
  const dsOpts: DatasetOptions & { modelV: number } = { B: opts.B, T: opts.T, seed: opts.seed, modelV: opts.modelV, rngStream: RNG_STREAM.eval };
  const out: EvalBatch[] = [];
  if (opts.spec.valSource === "sft") {
    if (opts.spec.phase !== "sft") throw new DataError('val_source "sft" is only allowed in the sft phase');
    const ds = SFTExampleDataset.open(opts.root, opts.spec.sources, "val", { ...dsOpts, longExamples: opts.longExamples });
    for (let i = 0; i < opts.count; i++) {
      const b = ds.getBatch(i);
      out.push({ x: b.x.slice(), y: b.yMasked.slice(), nTargets: b.nTargets });
    }
    return out;
  }
  if (!(STREAM_SOURCES as readonly string[]).includes(opts.spec.valSource)) {
    throw new DataError(`unknown val_source "${opts.spec.valSource}": expected one of ${[...STREAM_SOURCES, "sft"].join(", ")}`);
  }
  const ds = StreamDataset.open(opts.root, mixtureOf({ [opts.spec.valSource]: 1 }, "streams"), "val", dsOpts);
  for (let i = 0; i < opts.count; i++) {
    const b = ds.getBatch(i);
    out.push({ x: b.x.slice(), y: b.y.slice(), nTargets: b.y.length });
  }
  return out;
}
