import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mixtureOf } from "../src/data/paths.ts";
import { appendFileSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { openCache, mapFile } from "../src/data/cache.ts";
import { DataError } from "../src/data/errors.ts";
import { SFTExampleDataset } from "../src/data/sft.ts";
import { ASST_ID, EOT_ID, USER_ID, V_MIN } from "../src/data/tokenizer.ts";
import { tempRoot, writeSft, writeStream } from "./fixtures/data/helpers.ts";

let root: string;
let cleanup: () => void;
beforeEach(() => ({ root, cleanup } = tempRoot()));
afterEach(() => cleanup());

const V = 320;

/** The DataError thrown by fn (fails the test when nothing or something else is thrown). */
function dataError(fn: () => unknown): DataError {
  try {
    fn();
  } catch (e) {
    if (e instanceof DataError) return e;
    throw e;
  }
  throw new Error("expected a DataError, nothing was thrown");
}

function editMeta(bin: string, edit: (m: Record<string, unknown>) => void): string {
  const path = `${bin}.meta.json`;
  const m = JSON.parse(readFileSync(path, "utf8"));
  edit(m);
  writeFileSync(path, JSON.stringify(m));
  return path;
}

const ex = (...answer: number[]) => [USER_ID, 104, 105, ASST_ID, ...answer, EOT_ID];

describe("opening a valid cache", () => {
  test("stream cache: tokens, meta, mmap", () => {
    const bin = writeStream(root, "wiki", "train", [1, 2, 3, 260, 4]);
    const c = openCache(bin, { kind: "streams", modelV: V });
    expect(Array.from(c.tokens)).toEqual([1, 2, 3, 260, 4]);
    expect(c.meta.dtype).toBe("uint16");
    expect(c.meta.vocab_size).toBe(V_MIN);
    expect(c.mapped).toBe(true);
    expect(c.maxId).toBe(260);
    expect(c.offsets).toBeNull();
  });

  test("SFT cache with a sidecar and with inline boundaries read the same", () => {
    const examples = [ex(1, 2), ex(3), ex(4, 5, 6)];
    const a = openCache(writeSft(root, "dolly", "train", examples), { kind: "sft", modelV: V });
    const b = openCache(writeSft(root, "primer", "train", examples, { boundaries: "inline" }), { kind: "sft", modelV: V });
    expect(a.boundaryPath).toEndWith("dolly_train.bin.idx");
    expect(b.boundaryPath).toBeUndefined();
    expect(Array.from(a.offsets!)).toEqual([0, 7, 13, 21]);
    expect(Array.from(b.offsets!)).toEqual(Array.from(a.offsets!));
    expect(a.numExamples).toBe(3);
  });

  test("uint32 and int32 caches", () => {
    const u = openCache(writeStream(root, "wiki", "train", [70000, 5], { vocabSize: 70001 }), { kind: "streams", modelV: 70001 });
    expect(u.meta.dtype).toBe("uint32");
    expect(Array.from(u.tokens)).toEqual([70000, 5]);
    const i = openCache(writeStream(root, "roam", "train", [7, 5], { dtype: "int32" }), { kind: "streams", modelV: V });
    expect(i.tokens).toBeInstanceOf(Int32Array);
  });

  test("an empty file is read (mmap refuses zero bytes)", () => {
    const path = `${root}/empty.bin`;
    writeFileSync(path, "");
    expect(mapFile(path)).toEqual({ bytes: new Uint8Array(0), mapped: false });
  });
});

describe("cache validation errors name the file and what is wrong", () => {
  test("truncated .bin: token count differs from the meta", () => {
    const bin = writeStream(root, "wiki", "train", [1, 2, 3, 4]);
    truncateSync(bin, 6);
    const e = dataError(() => openCache(bin, { kind: "streams", modelV: V }));
    expect(e.message).toContain(bin);
    expect(e.message).toContain("holds 3 tokens");
    expect(e.message).toContain("num_tokens 4");
  });

  test("size not a multiple of the dtype", () => {
    const bin = writeStream(root, "wiki", "train", [1, 2, 3, 4]);
    appendFileSync(bin, new Uint8Array([1]));
    const e = dataError(() => openCache(bin, { kind: "streams", modelV: V }));
    expect(e.message).toContain(bin);
    expect(e.message).toContain("9 bytes is not a multiple of 2 (dtype uint16");
  });

  test("missing meta.json", () => {
    const bin = writeStream(root, "wiki", "train", [1, 2]);
    rmSync(`${bin}.meta.json`);
    const e = dataError(() => openCache(bin, { kind: "streams", modelV: V }));
    expect(e.message).toContain(`${bin}.meta.json`);
    expect(e.message).toContain("missing");
  });

  test("meta.json that is not JSON", () => {
    const bin = writeStream(root, "wiki", "train", [1, 2]);
    writeFileSync(`${bin}.meta.json`, "{ dtype: uint16");
    const e = dataError(() => openCache(bin, { kind: "streams", modelV: V }));
    expect(e.message).toContain(`${bin}.meta.json`);
    expect(e.message).toContain("invalid JSON");
  });

  test("meta.json with every problem listed at once", () => {
    const bin = writeStream(root, "wiki", "train", [1, 2]);
    const meta = editMeta(bin, (m) => {
      m.dtype = "float32";
      delete m.num_tokens;
      m.tokenizer = 7;
    });
    const e = dataError(() => openCache(bin, { kind: "streams", modelV: V }));
    expect(e.message).toContain(meta);
    expect(e.message).toContain('"dtype" is "float32", expected one of "uint16", "uint32", "int32"');
    expect(e.message).toContain('"num_tokens" is missing');
    expect(e.message).toContain('"tokenizer" is 7');
  });

  test("meta of another kind", () => {
    const bin = writeStream(root, "wiki", "train", [1, 2]);
    editMeta(bin, (m) => (m.kind = "sft"));
    expect(dataError(() => openCache(bin, { kind: "streams", modelV: V })).message).toContain('"kind" is "sft", expected "streams"');
  });

  test("vocab_size larger than the model V", () => {
    const bin = writeStream(root, "wiki", "train", [1, 2]);
    const e = dataError(() => openCache(bin, { kind: "streams", modelV: 256 }));
    expect(e.message).toContain(`${bin}.meta.json`);
    expect(e.message).toContain('"vocab_size" is 261, larger than the model vocabulary V=256');
  });

  test("an id >= vocab_size in the .bin", () => {
    const bin = writeStream(root, "wiki", "train", [1, 2, 3]);
    writeFileSync(bin, new Uint8Array(new Uint16Array([1, 300, 3]).buffer));
    const e = dataError(() => openCache(bin, { kind: "streams", modelV: V }));
    expect(e.message).toContain(bin);
    expect(e.message).toContain("token 1 has id 300, expected 0 <= id < vocab_size 261 (model V=320)");
  });

  test("a negative id in an int32 cache", () => {
    const bin = writeStream(root, "wiki", "train", [1, 2, 3], { dtype: "int32" });
    writeFileSync(bin, new Uint8Array(new Int32Array([1, 2, -5]).buffer));
    expect(dataError(() => openCache(bin, { kind: "streams", modelV: V })).message).toContain("token 2 has id -5");
  });

  test("special token id out of range", () => {
    const bin = writeStream(root, "wiki", "train", [1, 2]);
    editMeta(bin, (m) => ((m.special_tokens as Record<string, number>)["<|eot|>"] = 400));
    expect(dataError(() => openCache(bin, { kind: "streams", modelV: V })).message).toContain("special token <|eot|> has id 400, expected < vocab_size 261");
  });

  test("SFT meta without <|asst|>", () => {
    const bin = writeSft(root, "dolly", "train", [ex(1)]);
    editMeta(bin, (m) => delete (m.special_tokens as Record<string, number>)["<|asst|>"]);
    const e = dataError(() => openCache(bin, { kind: "sft", modelV: V }));
    expect(e.message).toContain(`${bin}.meta.json`);
    expect(e.message).toContain("special token <|asst|> is missing");
  });

  test("SFT boundaries: count, start, order, range, coverage", () => {
    const bin = writeSft(root, "dolly", "train", [ex(1), ex(2, 3)], { boundaries: "inline" });
    const open = () => openCache(bin, { kind: "sft", modelV: V });
    const cases: [number[], string][] = [
      [[0, 6], "has 2 offsets, expected num_examples + 1 = 3"],
      [[1, 6, 13], "first example offset is 1, expected 0"],
      [[0, 6, 6], "not strictly increasing: offset 2 is 6 after 6 (example 1 would be empty)"],
      [[0, 7, 5], "not strictly increasing"],
      [[0, 14, 13], "example offset 1 is 14, beyond num_tokens 13"],
      [[0, 6, 12], "last example offset is 12, expected num_tokens 13"],
      [[0, 6, 20], "example offset 2 is 20, beyond num_tokens 13"],
    ];
    for (const [b, msg] of cases) {
      editMeta(bin, (m) => (m.boundaries = b));
      const e = dataError(open);
      expect(e.message).toContain(bin);
      expect(e.message).toContain(msg);
    }
  });

  test("SFT boundary sidecar missing or of the wrong size", () => {
    const bin = writeSft(root, "dolly", "train", [ex(1), ex(2, 3)]);
    const idx = `${bin}.idx`;
    appendFileSync(idx, new Uint8Array(3));
    let e = dataError(() => openCache(bin, { kind: "sft", modelV: V }));
    expect(e.message).toContain(idx);
    expect(e.message).toContain("size 27 bytes, expected 24");
    rmSync(idx);
    e = dataError(() => openCache(bin, { kind: "sft", modelV: V }));
    expect(e.message).toContain(idx);
    expect(e.message).toContain("boundary file missing");
  });

  test("SFT sidecar whose offsets do not cover the .bin", () => {
    const bin = writeSft(root, "dolly", "train", [ex(1), ex(2, 3)]);
    writeFileSync(`${bin}.idx`, new BigUint64Array([0n, 6n, 12n]));
    const e = dataError(() => openCache(bin, { kind: "sft", modelV: V }));
    expect(e.message).toContain(`${bin}.idx`);
    expect(e.message).toContain("last example offset is 12, expected num_tokens 13");
  });

  test("SFT cache with nothing to learn: error when the dataset opens", () => {
    const bin = writeSft(root, "dolly", "train", [[USER_ID, 1, 2], [USER_ID, 3, ASST_ID]]);
    const e = dataError(() => SFTExampleDataset.open(root, mixtureOf({ dolly: 1 }, "sft"), "train", { B: 2, T: 8, seed: 1, modelV: V }));
    expect(e.message).toContain(bin);
    expect(e.message).toContain("none of its 2 examples has a target to learn within T+1=9 tokens");
  });

  test("an SFT example whose answer starts beyond T+1 counts as nothing to learn", () => {
    const long = [USER_ID, ...new Array(20).fill(65), ASST_ID, 66, EOT_ID];
    writeSft(root, "dolly", "train", [long]);
    expect(dataError(() => SFTExampleDataset.open(root, mixtureOf({ dolly: 1 }, "sft"), "train", { B: 1, T: 16, seed: 1, modelV: V })).message).toContain("T+1=17");
    const ds = SFTExampleDataset.open(root, mixtureOf({ dolly: 1 }, "sft"), "train", { B: 1, T: 24, seed: 1, modelV: V });
    expect(ds.learnable).toEqual({ dolly: 1 });
  });
});
