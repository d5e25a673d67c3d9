/**
 * Checkpoints that stream (issue 22: GPT-2 small with its moments is 1.5 GB): saving reads
 * the native model's buffers in ranges (gpt_read_state) straight into the file, loading
 * reads the file's records in chunks straight into the model (gpt_write_state), neither
 * holding the whole state or the whole file. The bytes are those of the whole-buffer
 * writer; what loads is what the whole-buffer reader gives. A model whose token embedding
 * is larger than one chunk (1 MiB) makes every tensor path cross chunk boundaries.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NativeModel } from "../src/backend/native.ts";
import { loadCheckpoint, loadCheckpointInto, saveCheckpoint, type Checkpoint, type FlatSource } from "../src/checkpoint/checkpoint.ts";
import { CheckpointError } from "../src/checkpoint/pyvalue.ts";
import { ZipArchive, zipStoredChunks } from "../src/checkpoint/zip.ts";
import type { ModelCfg } from "../src/model/config.ts";
import { initParams } from "../src/model/layout.ts";
import { AbandonedWrite } from "../src/util/atomic.ts";
import { firstBadFloat } from "../src/util/floats.ts";

// wte is 4099 x 264 = 1.08M floats: five chunks of the 256K-float stream buffer
const CFG: ModelCfg = { V: 4099, T: 16, C: 264, L: 1, H: 4, d_ff: 96 };
const B = 2;
const HP = { lr: 1e-3, weightDecay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, gradClip: 1 };

let root = "";
let model: NativeModel;
beforeAll(() => {
  root = fs.mkdtempSync(join(tmpdir(), "ckpt-stream-"));
  model = NativeModel.open(CFG, B, "cpu");
  model.setParams(initParams(CFG, 5));
  model.setOptState(null, null, 0);
  const x = Int32Array.from({ length: B * CFG.T }, (_, i) => (i * 37) % CFG.V);
  const y = Int32Array.from({ length: B * CFG.T }, (_, i) => (i * 53 + 1) % CFG.V);
  for (let s = 0; s < 2; s++) expect(model.trainStep(x, y, HP).applied).toBe(true);
});
afterAll(() => {
  model.close();
  fs.rmSync(root, { recursive: true, force: true });
});

const HPARAMS = { lr: 1e-3, weightDecay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8 };

/** The model's state as whole arrays: what the writer was given before it streamed. */
function wholeCheckpoint(): Checkpoint {
  return { modelCfg: CFG, trainCfg: { phase: "pretrain" }, params: model.getParams(), opt: { ...model.getOptState(), hparams: HPARAMS }, step: 2, bestValLoss: 3.5 };
}

/** One of the model's buffers read in ranges, counting the floats read at once. */
function rangeSource(which: "params" | "m" | "v", largest: { floats: number }): FlatSource {
  return {
    length: model.numParams,
    read(offset, dst) {
      largest.floats = Math.max(largest.floats, dst.length);
      model.readState(which, offset, dst);
    },
  };
}

describe("saving streams from the native buffers", () => {
  test("the file is byte-identical to the whole-array writer's, read through one 1 MiB buffer", () => {
    const whole = join(root, "whole.pt");
    const streamed = join(root, "streamed.pt");
    // the same name inside both archives: write both as "latest.pt" in two folders
    fs.mkdirSync(join(root, "a"));
    fs.mkdirSync(join(root, "b"));
    saveCheckpoint(join(root, "a", "latest.pt"), wholeCheckpoint());
    const largest = { floats: 0 };
    const ckpt = wholeCheckpoint();
    saveCheckpoint(join(root, "b", "latest.pt"), {
      ...ckpt,
      params: rangeSource("params", largest),
      opt: { ...ckpt.opt!, m: rangeSource("m", largest), v: rangeSource("v", largest), step: model.optStep() },
    });
    fs.renameSync(join(root, "a", "latest.pt"), whole);
    fs.renameSync(join(root, "b", "latest.pt"), streamed);
    const a = fs.readFileSync(whole);
    const b = fs.readFileSync(streamed);
    expect(a.length).toBeGreaterThan(3 * 4 * model.numParams);
    expect(b.equals(a)).toBe(true);
    expect(largest.floats).toBe(1 << 18); // never the whole buffer, never more than one chunk
  });

  test("a source that refuses its values (AbandonedWrite) leaves the old file and no temp file", () => {
    const dir = join(root, "refuse");
    fs.mkdirSync(dir);
    const path = join(dir, "latest.pt");
    saveCheckpoint(path, wholeCheckpoint());
    const before = fs.readFileSync(path);
    const ckpt = wholeCheckpoint();
    let reads = 0;
    const refusing: FlatSource = {
      length: model.numParams,
      read(offset, dst) {
        model.readState("v", offset, dst);
        if (++reads === 3) throw new AbandonedWrite(new RangeError("value refused"));
      },
    };
    expect(() => saveCheckpoint(path, { ...ckpt, opt: { ...ckpt.opt!, v: refusing } })).toThrow(new RangeError("value refused"));
    expect(fs.readFileSync(path).equals(before)).toBe(true);
    expect(fs.readdirSync(dir)).toEqual(["latest.pt"]);
  });
});

describe("loading streams into the native buffers", () => {
  let path = "";
  let want: Checkpoint;
  beforeAll(() => {
    fs.mkdirSync(join(root, "load"));
    path = join(root, "load", "latest.pt");
    want = wholeCheckpoint();
    saveCheckpoint(path, want);
  });

  function expectHolds(other: NativeModel, ckpt: Checkpoint): void {
    expect(Buffer.from(other.getParams().buffer).equals(Buffer.from(ckpt.params.buffer))).toBe(true);
    const opt = other.getOptState();
    expect(opt.step).toBe(ckpt.opt!.step);
    expect(Buffer.from(opt.m.buffer).equals(Buffer.from(ckpt.opt!.m.buffer))).toBe(true);
    expect(Buffer.from(opt.v.buffer).equals(Buffer.from(ckpt.opt!.v.buffer))).toBe(true);
  }

  test("a model loaded from the file holds the saved state to the bit, and the whole-array reader agrees", () => {
    const other = NativeModel.open(CFG, B, "cpu");
    try {
      const head = loadCheckpointInto(other, path);
      expect(head).toEqual({ modelCfg: CFG, trainCfg: { phase: "pretrain" }, opt: { step: want.opt!.step, hparams: HPARAMS, trainDefaults: null }, step: 2, bestValLoss: 3.5 });
      expectHolds(other, want);
      const arrays = loadCheckpoint(path);
      expect(Buffer.from(arrays.params.buffer).equals(Buffer.from(want.params.buffer))).toBe(true);
      expect(Buffer.from(arrays.opt!.v.buffer).equals(Buffer.from(want.opt!.v.buffer))).toBe(true);
    } finally {
      other.close();
    }
  });

  test("a re-zipped file with unaligned records (as zip -0 writes them) loads the same", () => {
    const zip = ZipArchive.open(fs.readFileSync(path), path);
    const records = zip.entries.map((e) => ({ name: e.name, data: zip.data(e) }));
    const unaligned = join(root, "load", "unaligned.pt");
    fs.writeFileSync(unaligned, Buffer.concat([...zipStoredChunks(records, { align: 1 })]));
    expect(ZipArchive.open(fs.readFileSync(unaligned), unaligned).entries.some((e) => e.dataOffset % 4 !== 0)).toBe(true);
    const other = NativeModel.open(CFG, B, "cpu");
    try {
      loadCheckpointInto(other, unaligned);
      expectHolds(other, want);
    } finally {
      other.close();
    }
  });

  test("weights only (SFT's init_from) leaves the moments alone; another shape is refused before a tensor is read", () => {
    const other = NativeModel.open(CFG, B, "cpu");
    try {
      expect(loadCheckpointInto(other, path, { optimizer: false }).opt).toBeNull();
      expect(Buffer.from(other.getParams().buffer).equals(Buffer.from(want.params.buffer))).toBe(true);
      expect(other.getOptState().m.every((x) => x === 0)).toBe(true);
    } finally {
      other.close();
    }
    const small = NativeModel.open({ ...CFG, V: 64 }, B, "cpu");
    try {
      let e: unknown = null;
      try {
        loadCheckpointInto(small, path);
      } catch (err) {
        e = err;
      }
      expect(e).toBeInstanceOf(CheckpointError);
      expect((e as Error).message).toBe(`${path}: model_cfg: differs from the model it is loaded into (checkpoint vs model: V: 4099 vs 64)`);
      expect(small.getParams().every((x) => x === 0)).toBe(true);
    } finally {
      small.close();
    }
  });

  test("a flipped byte in a later chunk of the embedding is named as corruption (CRC-32), not as a value", () => {
    const bytes = fs.readFileSync(path);
    const zip = ZipArchive.open(bytes, path);
    const wte = zip.get("latest/data/0")!;
    expect(wte.size).toBe(4 * CFG.V * CFG.C);
    const bad = Buffer.from(bytes);
    bad[wte.dataOffset + (1 << 22) + 3]! ^= 0x7f; // the exponent byte of a float in chunk 2: a huge value or NaN
    const file = join(root, "load", "flipped.pt");
    fs.writeFileSync(file, bad);
    const other = NativeModel.open(CFG, B, "cpu");
    try {
      expect(() => loadCheckpointInto(other, file)).toThrow(`${file}: record latest/data/0: CRC-32 mismatch`);
    } finally {
      other.close();
    }
  });
});

describe("firstBadFloat (the scan every streamed value goes through)", () => {
  test("finds the first NaN or infinity, or with nonNegative the first negative value; -0 and subnormals pass", () => {
    const values = Float32Array.from({ length: 1000 }, (_, i) => (i % 7) - 3 + i * 1e-3);
    expect(firstBadFloat(values)).toBe(-1);
    expect(firstBadFloat(values, true)).toBe(0); // -3 at index 0
    const positive = Float32Array.from({ length: 1000 }, (_, i) => i * 1e-40); // subnormals
    positive[10] = -0;
    expect(firstBadFloat(positive, true)).toBe(-1);
    for (const bad of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
      const v = Float32Array.from(positive);
      v[700] = bad;
      v[900] = bad;
      expect(firstBadFloat(v)).toBe(700);
      expect(firstBadFloat(v.subarray(701))).toBe(199);
    }
    positive[555] = -1e-30;
    expect(firstBadFloat(positive, true)).toBe(555);
    expect(firstBadFloat(positive)).toBe(-1);
  });
});
