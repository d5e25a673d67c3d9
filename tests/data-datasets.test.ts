import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mixtureOf } from "../src/data/paths.ts";
import { maskRow } from "../src/data/mask.ts";
import { evalBatches } from "../src/data/eval.ts";
import { RNG_STREAM, Rng } from "../src/util/random.ts";
import { SFTExampleDataset } from "../src/data/sft.ts";
import { StreamDataset } from "../src/data/stream.ts";
import { ASST_ID, EOT_ID, PAD_ID, USER_ID } from "../src/data/tokenizer.ts";
import { tempRoot, writeSft, writeStream } from "./fixtures/data/helpers.ts";

const V = 264;
let root: string;
let cleanup: () => void;

/** Stream tokens that tell their source and position: source s holds ids s*80 + (i mod 80). */
const BASE = { wiki: 0, roam: 80, primer: 160 } as const;
const LEN = { wiki: 5000, roam: 3000, primer: 500 } as const;

function sourceOf(id: number): keyof typeof BASE {
  return id < 80 ? "wiki" : id < 160 ? "roam" : "primer";
}

/** SFT examples whose answer tokens tell their source: ids base..base+k. */
function sftExamples(base: number, n: number, rng: Rng): number[][] {
  return Array.from({ length: n }, () => {
    const q = 1 + rng.below(6);
    const a = 1 + rng.below(12);
    return [USER_ID, ...Array.from({ length: q }, () => 33 + rng.below(20)), ASST_ID, ...Array.from({ length: a }, () => base + rng.below(20)), EOT_ID];
  });
}

beforeAll(() => {
  ({ root, cleanup } = tempRoot());
  for (const s of ["wiki", "roam", "primer"] as const) {
    for (const split of ["train", "val"] as const) {
      const n = split === "train" ? LEN[s] : 400;
      writeStream(root, s, split, Array.from({ length: n }, (_, i) => BASE[s] + ((i + (split === "val" ? 7 : 0)) % 80)));
    }
  }
  const rng = new Rng(3, 0, 3);
  writeSft(root, "dolly", "train", [...sftExamples(100, 300, rng), [USER_ID, 1, 2, 3]]); // one without <|asst|>
  writeSft(root, "oasst1", "train", sftExamples(140, 200, rng));
  writeSft(root, "primer", "train", sftExamples(180, 50, rng));
  writeSft(root, "dolly", "val", sftExamples(100, 40, rng));
  writeSft(root, "oasst1", "val", sftExamples(140, 40, rng));
});
afterAll(() => cleanup());

const MIX = { wiki: 0.784, roam: 0.196, primer: 0.02 };

/** Chi-square statistic of observed counts against expected probabilities. */
function chiSquare(counts: Record<string, number>, probs: Record<string, number>): number {
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  let chi = 0;
  for (const [k, p] of Object.entries(probs)) {
    const e = total * p;
    chi += ((counts[k] ?? 0) - e) ** 2 / e;
  }
  return chi;
}

describe("StreamDataset", () => {
  test("rows are windows of T+1 consecutive tokens of one source; y is x shifted by one", () => {
    const T = 16;
    const ds = StreamDataset.open(root, mixtureOf(MIX, "streams"), "train", { B: 8, T, seed: 42, modelV: V });
    for (let step = 0; step < 50; step++) {
      const { x, y } = ds.getBatch(step);
      for (let b = 0; b < 8; b++) {
        const row = [...x.subarray(b * T, b * T + T), y[b * T + T - 1]];
        const src = sourceOf(row[0]);
        for (let j = 1; j <= T; j++) expect(row[j]).toBe(BASE[src] + ((row[j - 1] - BASE[src] + 1) % 80));
        for (let j = 0; j < T - 1; j++) expect(y[b * T + j]).toBe(x[b * T + j + 1]);
      }
    }
  });

  test("the batch of a step is a pure function of (seed, step)", () => {
    const opts = { B: 4, T: 32, seed: 42, modelV: V };
    const a = StreamDataset.open(root, mixtureOf(MIX, "streams"), "train", opts);
    const b = StreamDataset.open(root, mixtureOf(MIX, "streams"), "train", opts);
    const copy = (bt: { x: Int32Array; y: Int32Array }) => ({ x: bt.x.slice(), y: bt.y.slice() });
    const a7 = copy(a.getBatch(7));
    a.getBatch(3);
    expect(copy(a.getBatch(7))).toEqual(a7); // order of calls does not matter
    expect(copy(b.getBatch(7))).toEqual(a7); // a fresh instance (a resumed run) draws the same
    expect(copy(a.getBatch(8)).x).not.toEqual(a7.x);
    const other = StreamDataset.open(root, mixtureOf(MIX, "streams"), "train", { ...opts, seed: 43 });
    expect(copy(other.getBatch(7)).x).not.toEqual(a7.x);
  });

  test("the returned buffers are reused between calls", () => {
    const ds = StreamDataset.open(root, mixtureOf(MIX, "streams"), "train", { B: 2, T: 8, seed: 1, modelV: V });
    expect(ds.getBatch(0).x).toBe(ds.getBatch(1).x);
  });

  test("sources are drawn per row by the normalized probabilities (chi-square)", () => {
    const T = 4;
    const probs = { wiki: 2, roam: 1, primer: 1 }; // normalized: 0.5, 0.25, 0.25
    const ds = StreamDataset.open(root, mixtureOf(probs, "streams"), "train", { B: 16, T, seed: 5, modelV: V });
    const counts: Record<string, number> = {};
    for (let step = 0; step < 1000; step++) {
      const { x } = ds.getBatch(step);
      for (let b = 0; b < 16; b++) counts[sourceOf(x[b * T])] = (counts[sourceOf(x[b * T])] ?? 0) + 1;
    }
    // 2 degrees of freedom: P(chi2 > 13.8) = 0.001
    expect(chiSquare(counts, { wiki: 0.5, roam: 0.25, primer: 0.25 })).toBeLessThan(13.8);
    // and the spec's default mixture, including its 2% source
    const mix = StreamDataset.open(root, mixtureOf(MIX, "streams"), "train", { B: 16, T, seed: 6, modelV: V });
    const c2: Record<string, number> = {};
    for (let step = 0; step < 1000; step++) {
      const { x } = mix.getBatch(step);
      for (let b = 0; b < 16; b++) c2[sourceOf(x[b * T])] = (c2[sourceOf(x[b * T])] ?? 0) + 1;
    }
    expect(chiSquare(c2, MIX)).toBeLessThan(13.8);
  });

  test("offsets cover the whole cache, first and last window included", () => {
    const { root: r, cleanup: done } = tempRoot();
    try {
      const T = 8;
      writeStream(r, "roam", "train", Array.from({ length: T + 3 }, (_, i) => 10 + i)); // offsets 0, 1, 2
      const ds = StreamDataset.open(r, mixtureOf({ roam: 1 }, "streams"), "train", { B: 32, T, seed: 9, modelV: V });
      const starts = new Map<number, number>();
      for (let step = 0; step < 20; step++) {
        const { x, y } = ds.getBatch(step);
        for (let b = 0; b < 32; b++) {
          starts.set(x[b * T], (starts.get(x[b * T]) ?? 0) + 1);
          expect(y[b * T + T - 1]).toBe(x[b * T] + T); // the window ends inside the cache
        }
      }
      expect([...starts.keys()].sort()).toEqual([10, 11, 12]);
      for (const n of starts.values()) expect(n).toBeGreaterThan(150); // ~213 each of 640
    } finally {
      done();
    }
  });

  test("a probability of 0 leaves the source out; a cache shorter than T+1 is an error", () => {
    const ds = StreamDataset.open(root, mixtureOf({ wiki: 1, roam: 0 }, "streams"), "train", { B: 1, T: 8, seed: 1, modelV: V });
    expect(ds.sources.map((s) => s.source)).toEqual(["wiki"]);
    expect(() => StreamDataset.open(root, mixtureOf({ primer: 1 }, "streams"), "train", { B: 1, T: 500, seed: 1, modelV: V })).toThrow(/primer_train\.bin: holds 500 tokens, fewer than one window of T\+1=501/);
    expect(() => StreamDataset.open(root, mixtureOf({ primer: 1 }, "streams"), "train", { B: 1, T: 499, seed: 1, modelV: V })).not.toThrow();
    expect(() => StreamDataset.open(root, mixtureOf({ wiki: 1 }, "streams"), "train", { B: 0, T: 8, seed: 1, modelV: V })).toThrow(/B=0/);
  });
});

describe("SFTExampleDataset", () => {
  const SFT_MIX = { dolly: 0.5, oasst1: 0.3, primer: 0.2 };
  const srcOfAnswer = (id: number) => (id < 140 ? "dolly" : id < 180 ? "oasst1" : "primer");

  test("rows are whole examples, truncated to T+1, padded, masked by the rule", () => {
    const T = 12;
    const ds = SFTExampleDataset.open(root, mixtureOf(SFT_MIX, "sft"), "train", { B: 8, T, seed: 42, modelV: V });
    for (let step = 0; step < 40; step++) {
      const { x, y, yMasked, nTargets } = ds.getBatch(step);
      let counted = 0;
      for (let b = 0; b < 8; b++) {
        const row = [...x.subarray(b * T, (b + 1) * T), y[(b + 1) * T - 1]];
        expect(row[0]).toBe(USER_ID);
        const eot = row.indexOf(EOT_ID);
        const len = eot >= 0 ? eot + 1 : T + 1;
        for (let j = len; j <= T; j++) expect(row[j]).toBe(PAD_ID);
        const expected = new Int32Array(T);
        const n = maskRow(row, 0, len, T, ASST_ID, EOT_ID, expected, 0);
        expect(Array.from(yMasked.subarray(b * T, (b + 1) * T))).toEqual(Array.from(expected));
        expect(n).toBeGreaterThan(0); // every drawn row teaches something
        counted += n;
      }
      expect(nTargets).toBe(counted);
    }
  });

  test("examples with nothing to learn are skipped and counted", () => {
    const ds = SFTExampleDataset.open(root, mixtureOf(SFT_MIX, "sft"), "train", { B: 4, T: 32, seed: 1, modelV: V });
    expect(ds.skipped).toEqual({ dolly: 1, oasst1: 0, primer: 0 });
    expect(ds.learnable).toEqual({ dolly: 300, oasst1: 200, primer: 50 });
    expect(ds.skippedTotal).toBe(1);
    // with T = 4 a question of up to 6 tokens can push <|asst|> out of the row
    const short = SFTExampleDataset.open(root, mixtureOf(SFT_MIX, "sft"), "train", { B: 4, T: 4, seed: 1, modelV: V });
    expect(short.skippedTotal).toBeGreaterThan(1);
    expect(short.learnable.dolly + short.skipped.dolly).toBe(301);
  });

  test("deterministic per (seed, step), and sources drawn by the probabilities", () => {
    const T = 24;
    const opts = { B: 16, T, seed: 11, modelV: V };
    const a = SFTExampleDataset.open(root, mixtureOf(SFT_MIX, "sft"), "train", opts);
    const b = SFTExampleDataset.open(root, mixtureOf(SFT_MIX, "sft"), "train", opts);
    const snap = (d: SFTExampleDataset, s: number) => {
      const r = d.getBatch(s);
      return [r.x.slice(), r.y.slice(), r.yMasked.slice()];
    };
    expect(snap(a, 5)).toEqual(snap(b, 5));
    expect(snap(a, 5)[0]).not.toEqual(snap(a, 6)[0]);
    const counts: Record<string, number> = {};
    for (let step = 0; step < 500; step++) {
      const { x } = a.getBatch(step);
      for (let r = 0; r < 16; r++) {
        const row = Array.from(x.subarray(r * T, (r + 1) * T));
        const src = srcOfAnswer(row[row.indexOf(ASST_ID) + 1]);
        counts[src] = (counts[src] ?? 0) + 1;
      }
    }
    expect(chiSquare(counts, SFT_MIX)).toBeLessThan(13.8);
  });
});

describe("evalBatches", () => {
  test("stream val source: fixed by the seed, plain targets, apart from training draws", () => {
    const spec = { phase: "pretrain" as const, sources: mixtureOf(MIX, "streams"), valSource: "wiki" };
    const opts = { root, spec, B: 4, T: 16, seed: 42, modelV: V, count: 5 };
    const a = evalBatches(opts);
    expect(a.length).toBe(5);
    expect(evalBatches(opts)).toEqual(a);
    expect(evalBatches({ ...opts, seed: 43 })[0].x).not.toEqual(a[0].x);
    expect(a[0].x).not.toEqual(a[1].x);
    expect(a[0].nTargets).toBe(64);
    for (const b of a) for (const id of b.x) expect(sourceOf(id)).toBe("wiki");
    // the same draws on the training stream would give other windows
    const train = StreamDataset.open(root, mixtureOf({ wiki: 1 }, "streams"), "val", { B: 4, T: 16, seed: 42, modelV: V, rngStream: RNG_STREAM.train });
    expect(train.getBatch(0).x).not.toEqual(a[0].x);
    const evalStream = StreamDataset.open(root, mixtureOf({ wiki: 1 }, "streams"), "val", { B: 4, T: 16, seed: 42, modelV: V, rngStream: RNG_STREAM.eval });
    expect(evalStream.getBatch(0).x).toEqual(a[0].x);
  });

  test('val_source "sft": masked targets from the SFT val caches of the mixture', () => {
    const spec = { phase: "sft" as const, sources: mixtureOf({ dolly: 1, oasst1: 1 }, "sft"), valSource: "sft" };
    const batches = evalBatches({ root, spec, B: 4, T: 16, seed: 42, modelV: V, count: 3 });
    for (const b of batches) {
      expect(b.y.some((v) => v === -100)).toBe(true);
      expect(b.nTargets).toBe(b.y.filter((v) => v !== -100).length);
      expect(b.nTargets).toBeGreaterThan(0);
    }
    expect(() => evalBatches({ root, spec: { ...spec, sources: mixtureOf({ primer: 1 }, "sft") }, B: 4, T: 16, seed: 42, modelV: V, count: 3 })).toThrow(/primer_val\.bin/);
    expect(() => evalBatches({ root, spec: { ...spec, phase: "pretrain" }, B: 4, T: 16, seed: 42, modelV: V, count: 3 })).toThrow(/only allowed in the sft phase/);
  });
});

describe("Rng", () => {
  test("keyed by (seed, step, stream), uniform in [0, 1)", () => {
    const draw = (s: number, t: number, k: number) => Array.from({ length: 4 }, (_, __, r = new Rng(s, t, k)) => r.nextU32());
    expect(draw(1, 2, 3)).toEqual(draw(1, 2, 3));
    expect(new Rng(1, 2, 3).nextU32()).not.toBe(new Rng(1, 3, 3).nextU32());
    expect(new Rng(1, 2, 3).nextU32()).not.toBe(new Rng(2, 2, 3).nextU32());
    expect(new Rng(1, 2, 3).nextU32()).not.toBe(new Rng(1, 2, 4).nextU32());
    expect(new Rng(2 ** 40, 0, 1).nextU32()).not.toBe(new Rng(0, 0, 1).nextU32());
    const r = new Rng(0, 0, 0);
    let sum = 0;
    for (let i = 0; i < 100000; i++) {
      const u = r.uniform();
      expect(u >= 0 && u < 1).toBe(true);
      sum += u;
    }
    expect(Math.abs(sum / 100000 - 0.5)).toBeLessThan(0.01);
    expect(() => new Rng(1.5, 0, 0)).toThrow(/seed/);
    expect(() => new Rng(1, -1, 0)).toThrow(/step/);
  });
});
