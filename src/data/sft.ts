/**
 * SFT batches: each row is one whole example (drawn per row: the source by the mixture
 * probabilities, then an example uniformly), truncated to T+1 tokens and padded to T+1
 * with the pad id; get_batch returns (x, y, y_masked) as the spec's contract says.
 * Examples with nothing to learn within T+1 tokens are skipped (counted in `skipped`).
 */
import { assertSameTokenizer, specialId } from "./cache.ts";
import { checkDatasetOptions, type DatasetOptions, type MixtureSource, openMixture, type SftBatch } from "./dataset.ts";
import { DataError } from "./errors.ts";
import { firstLearnableAsst, maskRow } from "./mask.ts";
import type { Mixture, Split } from "./paths.ts";
import { cumulative, Rng } from "../util/random.ts";

export class SFTExampleDataset {
  readonly sources: readonly MixtureSource[];
  readonly B: number;
  readonly T: number;
  readonly seed: number;
  readonly asstId: number;
  readonly eotId: number;
  readonly padId: number;
  /** Per source: examples that can be drawn (a counted target within T+1 tokens). */
  readonly learnable: Readonly<Record<string, number>>;
  /** Per source: examples skipped because nothing would be learned within T+1 tokens. */
  readonly skipped: Readonly<Record<string, number>>;
  /** Per source: examples longer than T+1 tokens (drawn, but truncated). */
  readonly truncated: Readonly<Record<string, number>>;
  private readonly rngStream: number;
  private readonly cum: Float64Array;
  /** Per source: indices of the learnable examples. */
  private readonly pool: Uint32Array[];
  private readonly row: Int32Array;
  private readonly batch: SftBatch;

  constructor(sources: readonly MixtureSource[], options: DatasetOptions) {
    const opts = checkDatasetOptions(options);
    if (sources.length === 0) throw new DataError("an SFT dataset needs at least one source");
    for (const s of sources) {
      if (s.cache.kind !== "sft" || s.cache.offsets === null) {
        throw new DataError(`opened as a ${s.cache.kind} cache, expected an SFT example cache`, s.cache.binPath);
      }
    }
    const caches = sources.map((s) => s.cache);
    assertSameTokenizer(caches, ["<|asst|>", "<|eot|>", "<|pad|>"]);
    this.asstId = specialId(caches[0], "<|asst|>");
    this.eotId = specialId(caches[0], "<|eot|>");
    this.padId = specialId(caches[0], "<|pad|>");
    this.sources = sources;
    this.B = opts.B;
    this.T = opts.T;
    this.seed = opts.seed;
    this.rngStream = opts.rngStream;
    const learnable: Record<string, number> = {};
    const skipped: Record<string, number> = {};
    const truncated: Record<string, number> = {};
    this.pool = sources.map((s) => {
      const { tokens, offsets, numExamples, binPath } = s.cache;
      const o = offsets!;
      const keep = new Uint32Array(numExamples);
      let k = 0;
      let nothing = 0;
      let long = 0;
      for (let i = 0; i < numExamples; i++) {
        const n = o[i + 1] - o[i];
        if (n > opts.T + 1) long++;
        if (firstLearnableAsst(tokens, o[i], n, opts.T, this.asstId) >= 0) keep[k++] = i;
        else nothing++;
      }
      if (k === 0) {
        throw new DataError(
          `none of its ${numExamples} examples has a target to learn within T+1=${opts.T + 1} tokens (an <|asst|> id ${this.asstId} followed by at least one token); expected SFT examples <|user|>...<|asst|>answer<|eot|>`,
          binPath,
        );
      }
      learnable[s.source] = k;
      skipped[s.source] = nothing;
      truncated[s.source] = long;
      return keep.subarray(0, k);
    });
    this.learnable = learnable;
    this.skipped = skipped;
    this.truncated = truncated;
    this.cum = cumulative(sources.map((s) => s.prob));
    this.row = new Int32Array(opts.T + 1);
    const n = opts.B * opts.T;
    this.batch = { x: new Int32Array(n), y: new Int32Array(n), yMasked: new Int32Array(n), nTargets: 0 };
  }

  /** Opens the `<source>_<split>` SFT caches of a mixture under `root` and validates them. */
  static open(root: string, mixture: Mixture, split: Split, options: DatasetOptions & { modelV: number }): SFTExampleDataset {
    return new SFTExampleDataset(openMixture(root, "sft", mixture, split, options.modelV), options);
  }

  /** Examples skipped over all sources (nothing to learn within T+1 tokens). */
  get skippedTotal(): number {
    return Object.values(this.skipped).reduce((a, b) => a + b, 0);
  }

  /**
   * (x, y, y_masked) of a step, a pure function of (seed, step); every row has at least
   * one counted target. The returned arrays are reused by the next call.
   */
  getBatch(step: number): SftBatch {
    const rng = new Rng(this.seed, step, this.rngStream);
    const { x, y, yMasked } = this.batch;
    const T = this.T;
    const row = this.row;
    let nTargets = 0;
    for (let b = 0; b < this.B; b++) {
      const si = rng.pick(this.cum);
      const pool = this.pool[si];
      const { tokens, offsets } = this.sources[si].cache;
      const e = pool[rng.below(pool.length)];
      const start = offsets![e];
      const len = Math.min(offsets![e + 1] - start, T + 1);
      row.set(tokens.subarray(start, start + len));
      row.fill(this.padId, len);
      x.set(row.subarray(0, T), b * T);
      y.set(row.subarray(1, T + 1), b * T);
      nTargets += maskRow(row, 0, len, T, this.asstId, this.eotId, yMasked, b * T);
    }
    this.batch.nTargets = nTargets;
    return this.batch;
  }
}
