import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { DataError } from "../src/data/errors.ts";
import { assertCachesPresent, cachePaths, missingCacheFiles, mixtureOf, normalizeMixture, type PhaseDataSpec } from "../src/data/paths.ts";
import { ASST_ID, EOT_ID, USER_ID } from "../src/data/tokenizer.ts";
import { tempRoot, writeSft, writeStream } from "./fixtures/data/helpers.ts";

let root: string;
let cleanup: () => void;
beforeEach(() => ({ root, cleanup } = tempRoot()));
afterEach(() => cleanup());

const PRETRAIN: PhaseDataSpec = { phase: "pretrain", sources: mixtureOf({ wiki: 0.784, roam: 0.196, primer: 0.02 }, "streams"), valSource: "wiki" };
const SFT: PhaseDataSpec = { phase: "sft", sources: mixtureOf({ dolly: 0.7, oasst1: 0.3 }, "sft"), valSource: "wiki" };

describe("cache paths", () => {
  test("the spec's layout", () => {
    expect(cachePaths("data/cache", "streams", "wiki", "train")).toEqual({
      bin: "data/cache/streams/wiki_train.bin",
      meta: "data/cache/streams/wiki_train.bin.meta.json",
      idx: "data/cache/streams/wiki_train.bin.idx",
    });
    expect(cachePaths("data/cache", "sft", "oasst1", "val").meta).toBe("data/cache/sft/oasst1_val.bin.meta.json");
    expect(() => cachePaths("data/cache", "sft", "wiki", "train")).toThrow('unknown sft source "wiki": expected one of dolly, oasst1, primer');
    expect(() => cachePaths("data/cache", "streams", "wiki", "test")).toThrow('unknown split "test"');
  });

  test("mixtures are normalized; bad ones are errors", () => {
    expect(normalizeMixture({ wiki: 3, roam: 1, primer: 0 }, "streams")).toEqual([
      { source: "wiki", prob: 0.75 },
      { source: "roam", prob: 0.25 },
    ]);
    expect(() => normalizeMixture({ wiki: -1 }, "streams")).toThrow('source "wiki": probability must be a finite number >= 0, got -1');
    expect(() => normalizeMixture({ wiki: 0 }, "streams")).toThrow("no source has a positive probability");
    expect(() => normalizeMixture({ dolly: 1 }, "streams")).toThrow('unknown source "dolly"');
  });
});

describe("missing caches", () => {
  test("pretrain with nothing built: every file listed, with the naming convention", () => {
    const missing = missingCacheFiles(root, PRETRAIN).map((m) => m.path);
    const s = (name: string) => join(root, "streams", name);
    expect(missing).toEqual([
      s("wiki_train.bin"), s("wiki_train.bin.meta.json"),
      s("roam_train.bin"), s("roam_train.bin.meta.json"),
      s("primer_train.bin"), s("primer_train.bin.meta.json"),
      s("wiki_val.bin"), s("wiki_val.bin.meta.json"),
    ]);
    let err: unknown;
    try {
      assertCachesPresent(root, PRETRAIN);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DataError);
    const msg = (err as Error).message;
    for (const p of missing) expect(msg).toContain(p);
    expect(msg).toContain("{source}_{split}.bin with source in wiki|roam|primer, split in train|val");
    expect(msg).toContain("<same path>.meta.json");
  });

  test("only what is missing is listed; a probability of 0 needs no cache", () => {
    for (const s of ["wiki", "roam"] as const) writeStream(root, s, "train", [1, 2, 3]);
    writeStream(root, "wiki", "val", [1, 2, 3]);
    rmSync(join(root, "streams", "roam_train.bin.meta.json"));
    expect(missingCacheFiles(root, PRETRAIN).map((m) => m.path)).toEqual([
      join(root, "streams", "roam_train.bin.meta.json"),
      join(root, "streams", "primer_train.bin"),
      join(root, "streams", "primer_train.bin.meta.json"),
    ]);
    expect(missingCacheFiles(root, { ...PRETRAIN, sources: mixtureOf({ wiki: 1, primer: 0 }, "streams") })).toEqual([]);
  });

  test("sft phase: SFT caches and the stream val cache, no fallback to pretraining data", () => {
    writeStream(root, "wiki", "train", [1, 2, 3]); // pretraining data does not stand in for SFT data
    const missing = missingCacheFiles(root, SFT).map((m) => m.path);
    expect(missing).toEqual([
      join(root, "sft", "dolly_train.bin"), join(root, "sft", "dolly_train.bin.meta.json"),
      join(root, "sft", "oasst1_train.bin"), join(root, "sft", "oasst1_train.bin.meta.json"),
      join(root, "streams", "wiki_val.bin"), join(root, "streams", "wiki_val.bin.meta.json"),
    ]);
    expect(() => assertCachesPresent(root, SFT)).toThrow(/no fallback to the pretraining streams/);
  });

  test('val_source "sft" needs the _val caches of the SFT mixture', () => {
    const ex = [[USER_ID, 1, ASST_ID, 2, EOT_ID]];
    for (const s of ["dolly", "oasst1"] as const) writeSft(root, s, "train", ex);
    writeSft(root, "dolly", "val", ex);
    expect(missingCacheFiles(root, { ...SFT, valSource: "sft" }).map((m) => m.path)).toEqual([
      join(root, "sft", "oasst1_val.bin"),
      join(root, "sft", "oasst1_val.bin.meta.json"),
    ]);
    expect(() => missingCacheFiles(root, { ...PRETRAIN, valSource: "sft" })).toThrow(/only allowed in the sft phase/);
    expect(() => missingCacheFiles(root, { ...SFT, valSource: "books" })).toThrow('unknown val_source "books": expected one of wiki, roam, primer, sft');
  });

  test("a boundary sidecar named by an existing meta is listed when absent", () => {
    const ex = [[USER_ID, 1, ASST_ID, 2, EOT_ID]];
    const bin = writeSft(root, "dolly", "train", ex);
    writeSft(root, "oasst1", "train", ex);
    writeStream(root, "wiki", "val", [1, 2]);
    expect(missingCacheFiles(root, SFT)).toEqual([]);
    rmSync(`${bin}.idx`);
    expect(missingCacheFiles(root, SFT).map((m) => m.path)).toEqual([`${bin}.idx`]);
    writeFileSync(`${bin}.meta.json`, "not json"); // reported when opened, not here
    expect(missingCacheFiles(root, SFT)).toEqual([]);
  });
});
