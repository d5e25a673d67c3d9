/**
 * SFT batches: each row is one example (drawn per row: the source by the mixture
 * probabilities, then an example uniformly), its row of T+1 tokens chosen by the
 * long-example rule (long-examples.ts: the head by default), padded to T+1 with the pad id;
 * get_batch returns (x, y, y_masked) as the spec's contract says. Examples with nothing to
 * learn in their row are skipped; `stats` says per source how many are whole, cut and
 * skipped and which share of the response targets the loss sees (sft-report.ts prints it).
 */
import { assertSameTokenizer, specialId } from "./cache.ts";
import { checkDatasetOptions, type DatasetOptions, type MixtureSource, openMixture, type SftBatch } from "./dataset.ts";
import { DataError } from "./errors.ts";
import { classifyExample, DEFAULT_LONG_EXAMPLES, emptyStats, type ExampleStats, type LongExampleRule, skippedOf } from "./long-examples.ts";
import { maskRow } from "./mask.ts";
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
  readonly longExamples: LongExampleRule;
  /** Per source: what the rule makes of its examples at this T. */
  readonly stats: Readonly<Record<string, ExampleStats>>;
  private readonly rngStream: number;
  private readonly cum: Float64Array;
  /** Per source: indices of the examples that can be drawn. */
  private readonly pool: Uint32Array[];
  /** Per source, parallel to pool: where the row starts in the example. */
  private readonly rowStart: Uint32Array[];
  /** Per source, parallel to pool: counted targets of the example's row. */
  private readonly rowTargets: Uint32Array[];
  private readonly row: Int32Array;
  private readonly batch: SftBatch;

  constructor(sources: readonly MixtureSource[], options: DatasetOptions & { longExamples?: LongExampleRule }) {
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
    this.longExamples = options.longExamples ?? DEFAULT_LONG_EXAMPLES;
    const stats: Record<string, ExampleStats> = {};
    this.rowStart = [];
    this.rowTargets = [];
    const ids = { asstId: this.asstId, eotId: this.eotId };
    this.pool = sources.map((s) => {
      const { tokens, offsets, numExamples, binPath } = s.cache;
      const o = offsets!;
      const st = emptyStats();
      const keep = new Uint32Array(numExamples);
      const rowStart = new Uint32Array(numExamples);
      const rowTargets = new Uint32Array(numExamples);
      let k = 0;
      for (let i = 0; i < numExamples; i++) {
        const row = classifyExample(st, tokens, o[i], o[i + 1] - o[i], opts.T, ids, this.longExamples);
        if (row === null) continue;
        keep[k] = i;
        rowStart[k] = row.offset;
        rowTargets[k++] = row.counted;
      }
      if (k === 0) {
        const dropped = st.tooLong > 0 ? ` (${st.tooLong} of them longer than T+1, dropped by long_examples "drop")` : "";
        throw new DataError(
          `none of its ${numExamples} examples has a target to learn within T+1=${opts.T + 1} tokens${dropped} (an <|asst|> id ${this.asstId} followed by at least one token); expected SFT examples <|user|>...<|asst|>answer<|eot|>`,
          binPath,
        );
      }
      stats[s.source] = st;
      this.rowStart.push(rowStart.subarray(0, k));
      this.rowTargets.push(rowTargets.subarray(0, k));
      return keep.subarray(0, k);
    });
    this.stats = stats;
    this.cum = cumulative(sources.map((s) => s.prob));
    this.row = new Int32Array(opts.T + 1);
    const n = opts.B * opts.T;
    this.batch = { x: new Int32Array(n), y: new Int32Array(n), yMasked: new Int32Array(n), nTargets: 0 };
  }

  /** Opens the `<source>_<split>` SFT caches of a mixture under `root` and validates them. */
  static open(root: string, mixture: Mixture, split: Split, options: DatasetOptions & { modelV: number; longExamples?: LongExampleRule }): SFTExampleDataset {
    return new SFTExampleDataset(openMixture(root, "sft", mixture, split, options.modelV), options);
  }

  /** Per source: examples that can be drawn. */
  get learnable(): Record<string, number> {
    return this.perSource((s) => s.whole + s.cut);
  }

  /** Per source: examples never drawn (nothing to learn in their row, or dropped as too long). */
  get skipped(): Record<string, number> {
    return this.perSource(skippedOf);
  }

  /** Examples skipped over all sources. */
  get skippedTotal(): number {
    return Object.values(this.skipped).reduce((a, b) => a + b, 0);
  }

  private perSource(f: (s: ExampleStats) => number): Record<string, number> {
    return Object.fromEntries(Object.entries(this.stats).map(([k, s]) => [k, f(s)]));
  }

  /**
   * Counted targets of the batches of steps [0, step): what getBatch's nTargets sum to, from
   * the same draws without building the rows (a resumed run's count so far).
   */
  targetsBefore(step: number): number {
    let total = 0;
    for (let s = 0; s < step; s++) {
      const rng = new Rng(this.seed, s, this.rngStream);
      for (let b = 0; b < this.B; b++) {
        const si = rng.pick(this.cum);
        total += this.rowTargets[si][rng.below(this.pool[si].length)];
      }
    }
    return total;
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
      const k = rng.below(pool.length);
      const e = pool[k];
      const start = offsets![e] + this.rowStart[si][k];
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
