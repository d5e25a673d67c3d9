/** What the datasets share: options, batch types, opening a mixture of caches. */
import { type TokenCache, openCache } from "./cache.ts";
import { DataError } from "./errors.ts";
import { type CacheKind, cachePaths, type Mixture, type Split } from "./paths.ts";
import { RNG_STREAM } from "../util/random.ts";

export interface DatasetOptions {
  /** Rows per batch. */
  B: number;
  /** Context length: x and y rows hold T tokens. */
  T: number;
  /** Run seed: the batch of step s is a pure function of (seed, s). */
  seed: number;
  /** RNG stream (default RNG_STREAM.train; the eval batches use RNG_STREAM.eval). */
  rngStream?: number;
}

export interface Batch {
  /** Inputs, B*T ids, row-major. */
  x: Int32Array;
  /** Next-token targets, B*T ids. */
  y: Int32Array;
}

export interface SftBatch extends Batch {
  /** y with -100 where the loss ignores the target (mask.ts). */
  yMasked: Int32Array;
  /** Counted (non -100) targets in yMasked. */
  nTargets: number;
}

/** One source of a mixture: its normalized probability and its opened cache. */
export interface MixtureSource {
  source: string;
  prob: number;
  cache: TokenCache;
}

export function checkDatasetOptions(opts: DatasetOptions): Required<DatasetOptions> {
  const bad: string[] = [];
  if (!Number.isSafeInteger(opts.B) || opts.B < 1) bad.push(`B=${opts.B} (expected an integer >= 1)`);
  if (!Number.isSafeInteger(opts.T) || opts.T < 1) bad.push(`T=${opts.T} (expected an integer >= 1)`);
  if (!Number.isSafeInteger(opts.seed)) bad.push(`seed=${opts.seed} (expected a safe integer)`);
  if (bad.length > 0) throw new DataError(`invalid dataset options: ${bad.join(", ")}`);
  return { ...opts, rngStream: opts.rngStream ?? RNG_STREAM.train };
}

/** Opens (and validates) the caches of a mixture. */
export function openMixture(
  root: string,
  kind: CacheKind,
  mixture: Mixture,
  split: Split,
  modelV: number,
): MixtureSource[] {
  return Object.entries(mixture).map(([source, prob]) => ({
    source,
    prob,
    cache: openCache(cachePaths(root, kind, source, split).bin, { kind, modelV }),
  }));
}
