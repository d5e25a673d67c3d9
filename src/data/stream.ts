/**
 * Pretraining batches: each row is a window of T+1 consecutive tokens at a uniformly
 * random offset of one source, the source drawn per row by the mixture probabilities.
 */
import { assertSameTokenizer } from "./cache.ts";
import { type Batch, checkDatasetOptions, type DatasetOptions, type MixtureSource, openMixture } from "./dataset.ts";
import { DataError } from "./errors.ts";
import type { Mixture, Split } from "./paths.ts";
import { cumulative, Rng } from "../util/random.ts";

export class StreamDataset {
  readonly sources: readonly MixtureSource[];
  readonly B: number;
  readonly T: number;
  readonly seed: number;
  private readonly rngStream: number;
  private readonly cum: Float64Array;
  private readonly batch: Batch;

  constructor(sources: readonly MixtureSource[], options: DatasetOptions) {
    const opts = checkDatasetOptions(options);
    if (sources.length === 0) throw new DataError("a stream dataset needs at least one source");
    for (const s of sources) {
      if (s.cache.kind !== "streams") throw new DataError(`opened as an ${s.cache.kind} cache, expected a stream cache`, s.cache.binPath);
      if (s.cache.numTokens < opts.T + 1) {
        throw new DataError(`holds ${s.cache.numTokens} tokens, fewer than one window of T+1=${opts.T + 1}; expected at least ${opts.T + 1}`, s.cache.binPath);
      }
    }
    assertSameTokenizer(sources.map((s) => s.cache), []);
    this.sources = sources;
    this.B = opts.B;
    this.T = opts.T;
    this.seed = opts.seed;
    this.rngStream = opts.rngStream;
    this.cum = cumulative(sources.map((s) => s.prob));
    this.batch = { x: new Int32Array(opts.B * opts.T), y: new Int32Array(opts.B * opts.T) };
  }

  /** Opens the `<source>_<split>` stream caches of a mixture under `root` and validates them. */
  static open(root: string, mixture: Mixture, split: Split, options: DatasetOptions & { modelV: number }): StreamDataset {
    return new StreamDataset(openMixture(root, "streams", mixture, split, options.modelV), options);
  }

  /**
   * The batch of a step, a pure function of (seed, step). The returned arrays are reused
   * by the next call: consume (or copy) them first.
   */
  getBatch(step: number): Batch {
    const rng = new Rng(this.seed, step, this.rngStream);
    const { x, y } = this.batch;
    const T = this.T;
    for (let b = 0; b < this.B; b++) {
      const { tokens, numTokens } = this.sources[rng.pick(this.cum)].cache;
      const off = rng.below(numTokens - T); // windows [off, off+T] inside the cache
      x.set(tokens.subarray(off, off + T), b * T);
      y.set(tokens.subarray(off + 1, off + 1 + T), b * T);
    }
    return this.batch;
  }
}
