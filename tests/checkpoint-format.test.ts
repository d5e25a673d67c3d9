/**
 * The checkpoint format without PyTorch: pickle and zip details against known CPython
 * bytes, round trips through our writer and reader, the checks loadCheckpoint makes,
 * refusal of truncated and corrupt files, and atomic replacement under failing disks.
 * (tests/checkpoint-torch.test.ts checks the same files against torch itself.)
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { nodeIo, writeFileAtomic, type FileIo } from "../src/util/atomic.ts";
import { encodeCheckpoint, loadCheckpoint, phaseOfCheckpointFile, saveCheckpoint, type Checkpoint } from "../src/checkpoint/checkpoint.ts";
import { decodeLong, encodeLong, pickleDump } from "../src/checkpoint/pickle.ts";
import { CheckpointError, PyDict, PyFloat, PyTuple, Storage, Tensor, type PyValue } from "../src/checkpoint/pyvalue.ts";
import { loadTorchBytes, loadTorchFile, saveTorchFile, torchSaveChunks } from "../src/checkpoint/torchfile.ts";
import { ZipArchive, zipStoredChunks, type ZipRecord } from "../src/checkpoint/zip.ts";
import type { ModelCfg } from "../src/model/config.ts";
import { initParams, numParams, paramLayout, TIED_LM_HEAD } from "../src/model/layout.ts";
import { Rng } from "../src/util/random.ts";
import { describeValue } from "./fixtures/checkpoint/describe.ts";

const CFG: ModelCfg = { V: 40, T: 8, C: 16, L: 2, H: 2, d_ff: 24 };
const N = numParams(CFG);

let root = "";
let counter = 0;
beforeAll(() => {
  root = fs.mkdtempSync(join(tmpdir(), "ckpt-format-"));
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

/** A fresh empty folder under the test's temp folder. */
function folder(): string {
  const d = join(root, `d${++counter}`);
  fs.mkdirSync(d);
  return d;
}

function randomArray(n: number, seed: number, scale = 1): Float32Array {
  const rng = new Rng(seed, 99);
  return Float32Array.from({ length: n }, () => rng.normal() * scale);
}

function sampleCheckpoint(overrides: Partial<Checkpoint> = {}): Checkpoint {
  return {
    modelCfg: Object.assign({ name: "tiny \u2713" }, CFG), // a verbatim cfg may have more keys
    trainCfg: { sources: { wiki: 0.784, roam: 0.196, primer: 0.02 }, train_cfg: { B: 4, base_lr: 3e-4, total_steps: 20000 }, list: [1, 2.5, null, false] },
    params: initParams(CFG, 3),
    opt: { m: randomArray(N, 1, 1e-2), v: randomArray(N, 2, 1e-4).map(Math.abs), step: 7, hparams: { lr: 3e-4, weightDecay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8 } },
    step: 7,
    bestValLoss: 2.75,
    ...overrides,
  };
}

function bitsEqual(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

/** The error thrown by fn (fails the test when nothing is thrown). */
function thrown(fn: () => unknown): Error {
  try {
    fn();
  } catch (e) {
    return e as Error;
  }
  throw new Error("expected an error, none was thrown");
}

// ---------------------------------------------------------------------------------

describe("pickle", () => {
  test("LONG encoding matches CPython's encode_long", () => {
    // pickle.encode_long(x).hex() in CPython 3.11
    const known: Array<[bigint, string]> = [
      [0n, ""], [1n, "01"], [127n, "7f"], [128n, "8000"], [255n, "ff00"], [256n, "0001"],
      [-1n, "ff"], [-128n, "80"], [-129n, "7fff"], [-256n, "00ff"],
      [2n ** 63n, "000000000000008000"], [-(2n ** 63n), "0000000000000080"], [2n ** 64n - 1n, "ffffffffffffffff00"],
    ];
    for (const [x, hex] of known) {
      expect(Buffer.from(encodeLong(x)).toString("hex")).toBe(hex);
      expect(decodeLong(Buffer.from(hex, "hex"))).toBe(x);
    }
  });

  test("protocol 2 bytes equal CPython's pickle.dumps for plain data (memo, batching, ints, floats)", () => {
    // pickle.dumps({'a': [1, 2.5, None, True], 'b': (1, 'x'), 'c': 'a', 'd': [], 'e': {}, 'f': -70000, 'g': 2**40}, protocol=2)
    const cpython =
      "80027d71002858010000006171015d7102284b014740040000000000004e886558010000006271034b0158010000007871048671055801000000637106" +
      "680158010000006471075d710858010000006571097d710a580100000066710b4a90eefeff580100000067710c8a06000000000001752e";
    const value = new PyDict(false, [
      ["a", [1, 2.5, null, true]],
      ["b", new PyTuple([1, "x"])],
      ["c", "a"],
      ["d", []],
      ["e", new PyDict()],
      ["f", -70000],
      ["g", 2 ** 40],
    ]);
    expect(Buffer.from(pickleDump(value)).toString("hex")).toBe(cpython);
  });

  test("values of every kind survive our writer and reader (shared objects stay shared)", () => {
    const storage = new Storage("float32", Float32Array.of(1, 2, 3, 4, 5, 6));
    const shared = [1, 2];
    const value = new PyDict(false, [
      ["ints", [0, 255, 256, 65536, -1, -(2 ** 31) - 1, 2 ** 53 - 1, 2n ** 80n, -(2n ** 80n)]],
      ["floats", [new PyFloat(1), -0, 0.5, NaN, Infinity, 1e-310]],
      ["strs", ["", "\u00e9\u{1F680}", ...Array.from({ length: 400 }, (_, i) => `s${i}`)]],
      ["nested", new PyTuple([new PyTuple([]), [shared, shared], new PyDict(true, [[3, null], [-4, true]])])],
      ["bytes", Uint8Array.of(0, 1, 254, 255)],
      ["t", new Tensor(storage, [2, 3])],
      ["tT", new Tensor(storage, [3, 2], [1, 3])],
      ["tail", new Tensor(storage, [2], [1], 4)],
      ["i64", Tensor.of(BigInt64Array.of(-(2n ** 62n), 5n), [2])],
      ["scalar", Tensor.of(Float32Array.of(7), [])],
    ]);
    const bytes = Buffer.concat([...torchSaveChunks(value)]);
    const back = loadTorchBytes(bytes, "memory") as PyDict;
    expect(describeValue(back)).toEqual(describeValue(value));
    const nested = (back.get("nested") as PyTuple).items[1] as PyValue[];
    expect(nested[0]).toBe(nested[1]);
    expect((back.get("t") as Tensor).storage).toBe((back.get("tT") as Tensor).storage);
    // storages are views into the file's bytes (64-byte aligned records), not copies
    expect((back.get("t") as Tensor).storage.data.buffer).toBe(bytes.buffer);
  });
});

describe("zip layout", () => {
  test("records start on 64-byte boundaries, in torch's order, and Python-free checks of the archive hold", () => {
    const d = folder();
    const path = join(d, "best.pt");
    saveCheckpoint(path, sampleCheckpoint());
    const bytes = fs.readFileSync(path);
    const zip = ZipArchive.open(bytes, path);
    const names = zip.entries.map((e) => e.name);
    expect(names[0]).toBe("best/data.pkl");
    expect(names[names.length - 1]).toBe("best/version");
    // storage keys sorted as strings, as torch 1.13 writes them
    const keys = names.filter((n) => n.startsWith("best/data/")).map((n) => n.slice("best/data/".length));
    expect(keys).toEqual([...keys].sort());
    expect(keys.length).toBe(paramLayout(CFG).length + 3 * paramLayout(CFG).length); // params + (step, m, v) per param
    for (const e of zip.entries) expect(e.dataOffset % 64).toBe(0);
    expect(new TextDecoder().decode(zip.data(zip.get("best/version")!))).toBe("3\n");
  });

  test("ZIP64 records (forced) read back", () => {
    const value = new PyDict(false, [["w", Tensor.of(randomArray(1000, 5), [10, 100])], ["empty", Tensor.of(new Float32Array(0), [0])]]);
    const bytes = Buffer.concat([...torchSaveChunks(value, { zip64Threshold: 1 })]);
    expect(describeValue(loadTorchBytes(bytes, "zip64"))).toEqual(describeValue(value));
  });
});

// ---------------------------------------------------------------------------------

describe("checkpoints, ours to ours", () => {
  test("every field round-trips exactly (weights and moments to the bit, configs verbatim)", () => {
    const path = join(folder(), "latest.pt");
    const ck = sampleCheckpoint();
    saveCheckpoint(path, ck);
    const back = loadCheckpoint(path, CFG);
    expect(back.modelCfg).toEqual(ck.modelCfg);
    expect(back.trainCfg).toEqual(ck.trainCfg);
    expect(bitsEqual(back.params, ck.params)).toBe(true);
    expect(bitsEqual(back.opt!.m, ck.opt!.m)).toBe(true);
    expect(bitsEqual(back.opt!.v, ck.opt!.v)).toBe(true);
    expect(back.opt!.step).toBe(7);
    expect(back.opt!.hparams).toEqual(ck.opt!.hparams);
    expect(back.step).toBe(7);
    expect(back.bestValLoss).toBe(2.75);
  });

  test("no optimizer, no best loss, a large step; optimizer at step 0 has no per-parameter state", () => {
    const d = folder();
    saveCheckpoint(join(d, "a.pt"), sampleCheckpoint({ opt: null, bestValLoss: null, step: 2 ** 40 }));
    const a = loadCheckpoint(join(d, "a.pt"));
    expect(a.opt).toBeNull();
    expect(a.bestValLoss).toBeNull();
    expect(a.step).toBe(2 ** 40);

    const hparams = { lr: 1e-3, weightDecay: 0, beta1: 0.8, beta2: 0.9, eps: 1e-6 };
    saveCheckpoint(join(d, "b.pt"), sampleCheckpoint({ opt: { m: new Float32Array(N), v: new Float32Array(N), step: 0, hparams } }));
    const raw = loadTorchFile(join(d, "b.pt")) as PyDict;
    expect(((raw.get("optimizer_state") as PyDict).get("state") as PyDict).size).toBe(0);
    const b = loadCheckpoint(join(d, "b.pt"));
    expect(b.opt!.step).toBe(0);
    expect(b.opt!.hparams).toEqual(hparams);
    expect(b.opt!.m.every((x) => x === 0)).toBe(true);
  });

  test("one save to several paths: each a complete file named after itself; saving is deterministic", () => {
    const d = folder();
    const ck = sampleCheckpoint();
    saveCheckpoint([join(d, "best.pt"), join(d, "latest.pt")], ck);
    saveCheckpoint(join(d, "againA.pt"), ck);
    saveCheckpoint(join(d, "againB.pt"), ck);
    for (const name of ["best", "latest"]) {
      expect(ZipArchive.open(fs.readFileSync(join(d, `${name}.pt`)), name).entries[0]!.name).toBe(`${name}/data.pkl`);
      expect(bitsEqual(loadCheckpoint(join(d, `${name}.pt`)).params, ck.params)).toBe(true);
    }
    // the same bytes but for the archive folder's name
    const a = fs.readFileSync(join(d, "againA.pt"));
    const b = Buffer.from(fs.readFileSync(join(d, "againB.pt")).toString("latin1").replaceAll("againB/", "againA/"), "latin1");
    expect(b.equals(a)).toBe(true);
  });

  test("the phase of a checkpoint comes from its train_cfg", () => {
    const d = folder();
    saveCheckpoint(join(d, "p.pt"), sampleCheckpoint());
    saveCheckpoint(join(d, "s.pt"), sampleCheckpoint({ trainCfg: { sft_sources: { dolly: 1 } } }));
    saveCheckpoint(join(d, "n.pt"), sampleCheckpoint({ trainCfg: {} }));
    expect(phaseOfCheckpointFile(join(d, "p.pt"))).toBe("pretrain");
    expect(phaseOfCheckpointFile(join(d, "s.pt"))).toBe("sft");
    expect(phaseOfCheckpointFile(join(d, "n.pt"))).toBeNull();
  });

  test("the writer refuses buffers that do not fit the model cfg", () => {
    expect(thrown(() => encodeCheckpoint(sampleCheckpoint({ params: new Float32Array(N - 1) }))).message).toContain(`expected ${N} float32 values`);
    expect(thrown(() => encodeCheckpoint(sampleCheckpoint({ modelCfg: { ...CFG, H: 3 } }))).message).toContain("not divisible");
    expect(thrown(() => encodeCheckpoint(sampleCheckpoint({ step: -1 }))).message).toContain("step -1");
  });
});

// ---------------------------------------------------------------------------------

describe("loadCheckpoint checks every tensor against the model cfg", () => {
  /** Saves the checkpoint dict after edit(dict) and returns what loading it throws. */
  function loadError(edit: (d: PyDict) => void, expected?: ModelCfg): Error & { path: string } {
    const path = join(folder(), "edited.pt");
    const dict = encodeCheckpoint(sampleCheckpoint());
    edit(dict);
    saveTorchFile(path, dict);
    return Object.assign(thrown(() => loadCheckpoint(path, expected)), { path });
  }
  const state = (d: PyDict) => d.get("model_state") as PyDict;
  const opt = (d: PyDict) => d.get("optimizer_state") as PyDict;
  const groups = (d: PyDict) => opt(d).get("param_groups") as PyDict[];

  test.each([
    ["a tensor of another size", (d: PyDict) => state(d).set("transformer.wpe.weight", Tensor.of(new Float32Array(9 * 16), [9, 16])),
      "model_state[transformer.wpe.weight]: has size (9, 16), expected (8, 16)"],
    ["a missing tensor", (d: PyDict) => state(d).map.delete("transformer.h.1.mlp.c_fc.bias"),
      "model_state: has no tensor transformer.h.1.mlp.c_fc.bias"],
    ["an int64 tensor", (d: PyDict) => state(d).set("transformer.ln_f.bias", Tensor.of(new BigInt64Array(16), [16])),
      "model_state[transformer.ln_f.bias]: has dtype int64, expected float32"],
    ["an unknown tensor", (d: PyDict) => state(d).set("transformer.h.9.ln_1.weight", Tensor.of(new Float32Array(16), [16])),
      "model_state: has tensors this model does not have: transformer.h.9.ln_1.weight"],
    ["an untied LM head", (d: PyDict) => state(d).set(TIED_LM_HEAD.name, Tensor.of(new Float32Array(40 * 16), [40, 16])),
      "model_state[lm_head.weight]: differs from transformer.wte.weight"],
    ["a bad model_cfg", (d: PyDict) => (d.get("model_cfg") as PyDict).set("H", 3),
      "model_cfg: C: 16 is not divisible by H=3"],
    ["a list instead of a state dict", (d: PyDict) => d.set("model_state", []),
      "model_state: is a list, expected a dict"],
    ["no step", (d: PyDict) => d.map.delete("step"),
      "checkpoint: has no step"],
    ["a float step", (d: PyDict) => d.set("step", new PyFloat(7)),
      "step: is a float, expected an int"],
    ["optimizer groups of other sizes", (d: PyDict) => groups(d).pop(),
      "optimizer_state['param_groups']: has groups of [10] tensors; expected nanoGPT's two groups of [10, 18]"],
    ["AdamW moments of another size", (d: PyDict) => ((opt(d).get("state") as PyDict).get(0) as PyDict).set("exp_avg", Tensor.of(new Float32Array(3), [3])),
      "optimizer_state['state'][0] (transformer.wte.weight)['exp_avg']: has size (3), expected (40, 16)"],
    ["parameters at different steps", (d: PyDict) => ((opt(d).get("state") as PyDict).get(5) as PyDict).set("step", Tensor.of(Float32Array.of(6), [])),
      "parameters are at different steps (7 and 6)"],
    ["a missing AdamW entry", (d: PyDict) => (opt(d).get("state") as PyDict).map.delete(3),
      "has no entry for parameter 3"],
    ["amsgrad", (d: PyDict) => groups(d)[0]!.set("amsgrad", true),
      "uses amsgrad"],
    ["decay on 1-D tensors", (d: PyDict) => groups(d)[1]!.set("weight_decay", new PyFloat(0.1)),
      "decays the 1-D tensors (weight_decay 0.1)"],
  ] as const)("refuses %s, naming the file and the key", (_, edit, message) => {
    const e = loadError(edit);
    expect(e).toBeInstanceOf(CheckpointError);
    expect(e.message.startsWith(`${e.path}: `)).toBe(true);
    expect(e.message).toContain(message);
  });

  test("refuses a model_cfg other than the expected one", () => {
    const e = loadError(() => {}, { ...CFG, C: 32 });
    expect(e.message).toContain("model_cfg: differs from the expected model (checkpoint vs expected: C: 16 vs 32)");
  });

  test("accepts names wrapped by DDP and torch.compile (module._orig_mod.*)", () => {
    const path = join(folder(), "wrapped.pt");
    const ck = sampleCheckpoint({ opt: null });
    const dict = encodeCheckpoint(ck);
    const sd = dict.get("model_state") as PyDict;
    dict.set("model_state", new PyDict(true, [...sd.entries()].map(([k, v]) => [`module._orig_mod.${String(k)}`, v])));
    saveTorchFile(path, dict);
    expect(bitsEqual(loadCheckpoint(path).params, ck.params)).toBe(true);
  });

  test("accepts what torch users write: an untied copy of the head, fp16 weights, one optimizer group, 1-element step", () => {
    const path = join(folder(), "variants.pt");
    const ck = sampleCheckpoint({ opt: { ...sampleCheckpoint().opt!, hparams: { lr: 1e-3, weightDecay: 0, beta1: 0.9, beta2: 0.99, eps: 1e-8 } } });
    ck.params = ck.params.map((x) => Math.round(x * 256) / 256); // exact in float16
    const dict = encodeCheckpoint(ck);
    const sd = dict.get("model_state") as PyDict;
    const wte = sd.get(TIED_LM_HEAD.tiedTo) as Tensor;
    sd.set(TIED_LM_HEAD.name, Tensor.of((wte.contiguousData() as Float32Array).slice(), [...wte.shape]));
    const ln = sd.get("transformer.ln_f.weight") as Tensor;
    const halves = Uint16Array.from(ln.toFloat32(), (x) => f16bits(x));
    sd.set("transformer.ln_f.weight", Tensor.of(halves, [16], "float16"));
    // One group of all tensors in layout order (torch.optim.AdamW(model.parameters())).
    const o = dict.get("optimizer_state") as PyDict;
    const g0 = (o.get("param_groups") as PyDict[])[0]!;
    const layout = paramLayout(CFG);
    const decayFirst = [...layout.filter((p) => p.decay), ...layout.filter((p) => !p.decay)];
    const st = o.get("state") as PyDict;
    const relabelled = new PyDict();
    for (const [k, v] of st.entries()) {
      const entry = v as PyDict;
      entry.set("step", Tensor.of(Float32Array.of(7), [1])); // capturable-style (1,) step
      relabelled.set(layout.indexOf(decayFirst[k as number]!), entry);
    }
    o.set("state", relabelled);
    g0.set("params", layout.map((_, i) => i));
    g0.set("weight_decay", new PyFloat(0));
    o.set("param_groups", [g0]);
    saveTorchFile(path, dict);
    const back = loadCheckpoint(path);
    expect(bitsEqual(back.params, ck.params)).toBe(true);
    expect(bitsEqual(back.opt!.m, ck.opt!.m)).toBe(true);
    expect(bitsEqual(back.opt!.v, ck.opt!.v)).toBe(true);
    expect(back.opt!.step).toBe(7);
    expect(back.opt!.hparams.weightDecay).toBe(0);
  });
});

/** float16 bits of x (x exactly representable, normal range). */
function f16bits(x: number): number {
  if (x === 0) return Object.is(x, -0) ? 0x8000 : 0;
  const sign = x < 0 ? 0x8000 : 0;
  const a = Math.abs(x);
  const e = Math.floor(Math.log2(a));
  const frac = Math.round((a / 2 ** e - 1) * 1024);
  return sign | ((e + 15) << 10) | frac;
}

// ---------------------------------------------------------------------------------

describe("truncated and corrupt files are refused with a message naming the file", () => {
  let good: Buffer;
  let goodPath = "";
  let zip: ZipArchive;
  beforeAll(() => {
    goodPath = join(folder(), "good.pt");
    saveCheckpoint(goodPath, sampleCheckpoint());
    good = fs.readFileSync(goodPath);
    zip = ZipArchive.open(good, goodPath);
  });

  function refusal(bytes: Uint8Array, name = "bad.pt"): string {
    const path = join(folder(), name);
    fs.writeFileSync(path, bytes);
    const e = thrown(() => loadCheckpoint(path));
    expect(e).toBeInstanceOf(CheckpointError);
    expect(e.message.startsWith(`${path}: `)).toBe(true);
    return e.message;
  }
  const patched = (edit: (b: Buffer) => void) => {
    const b = Buffer.from(good);
    edit(b);
    return b;
  };
  /** The archive rebuilt from (possibly edited) records. */
  const rebuilt = (edit: (records: ZipRecord[]) => ZipRecord[]) =>
    Buffer.concat([...zipStoredChunks(edit(zip.entries.map((e) => ({ name: e.name, data: zip.data(e) }))))]);

  test("missing file, zero-length file, text file, legacy torch format", () => {
    expect(thrown(() => loadCheckpoint(join(root, "nope.pt"))).message).toBe(`${join(root, "nope.pt")}: cannot read: no such file`);
    expect(refusal(new Uint8Array(0))).toContain("file is empty");
    expect(refusal(new TextEncoder().encode("{\"step\": 3}\n"))).toContain("not a zip archive");
    expect(refusal(Uint8Array.of(0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c))).toContain("legacy (pre-1.6, non-zip) torch.save format");
  });

  test("truncated anywhere", () => {
    for (const len of [1, 4, 30, 64, 100, 1000, good.length >> 1, good.length - 200, good.length - 23, good.length - 1]) {
      expect(refusal(good.subarray(0, len))).toMatch(len < 4 ? /not a zip archive/ : /truncated|corrupt|no local header|run past/);
    }
  });

  test("a flipped byte in tensor data or in data.pkl, or a wrong stored CRC", () => {
    const storage = zip.get("good/data/3")!;
    expect(refusal(patched((b) => (b[storage.dataOffset + 5]! ^= 0x10)))).toContain("record good/data/3: CRC-32 mismatch");
    const pkl = zip.get("good/data.pkl")!;
    expect(refusal(patched((b) => (b[pkl.dataOffset + 40]! ^= 0x01)))).toContain("record good/data.pkl: CRC-32 mismatch");
    // the CRC field of the first central directory entry
    const cd = good.lastIndexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]), good.length - 1);
    const first = good.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
    expect(cd).toBeGreaterThan(0);
    expect(refusal(patched((b) => (b[first + 16]! ^= 0xff)))).toContain("record good/data.pkl: CRC-32 mismatch");
  });

  test("any single flipped byte is refused or, outside what the format checks, harmless", () => {
    const rng = new Rng(77, 1);
    const ref = loadCheckpoint(goodPath);
    const path = join(folder(), "flip.pt");
    for (let i = 0; i < 300; i++) {
      const b = Buffer.from(good);
      const at = rng.below(b.length);
      b[at]! ^= 1 << rng.below(8);
      fs.writeFileSync(path, b);
      try {
        const back = loadCheckpoint(path);
        // padding, timestamps, version fields: the content must still be exactly the same
        expect(bitsEqual(back.params, ref.params) && bitsEqual(back.opt!.m, ref.opt!.m) && back.step === ref.step).toBe(true);
      } catch (e) {
        expect(e).toBeInstanceOf(CheckpointError);
        expect((e as Error).message.startsWith(`${path}: `)).toBe(true);
      }
    }
  });

  test("structural problems: no data.pkl, no storage record, short storage, no version, bad version, compressed record", () => {
    expect(refusal(rebuilt((r) => r.filter((x) => !x.name.endsWith("data.pkl"))))).toContain("no good/data.pkl record");
    expect(refusal(rebuilt((r) => r.filter((x) => x.name !== "good/data/1")))).toContain("storage 1 has no record good/data/1");
    expect(refusal(rebuilt((r) => r.map((x) => (x.name === "good/data/2" ? { ...x, data: (x.data as Uint8Array).subarray(4) } : x))))).toMatch(
      /storage 2: record has \d+ bytes, expected \d+ x 4 \(float32\)/,
    );
    expect(refusal(rebuilt((r) => r.filter((x) => !x.name.endsWith("version"))))).toContain("no good/version record");
    expect(refusal(rebuilt((r) => r.map((x) => (x.name.endsWith("version") ? { ...x, data: new TextEncoder().encode("11\n") } : x))))).toContain(
      "unsupported format version \"11\"",
    );
    const first = good.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
    expect(refusal(patched((b) => b.writeUInt16LE(8, first + 10)))).toContain("record good/data.pkl is compressed (method 8)");
    expect(refusal(rebuilt((r) => r.map((x) => ({ ...x, name: x.name.replace("good/", "") }))))).toContain("is not inside an archive folder");
  });

  test("bad pickles: unknown opcode, refused global, not a checkpoint dict", () => {
    const withPickle = (pkl: number[] | Uint8Array) =>
      rebuilt((r) => r.map((x) => (x.name.endsWith("data.pkl") ? { ...x, data: Uint8Array.from(pkl) } : x)));
    expect(refusal(withPickle([0x80, 0x02, 0xff, 0x2e]))).toContain("bad pickle at byte 2: unknown or unsupported opcode 0xff");
    const evil = Buffer.from("\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.", "latin1");
    expect(refusal(withPickle(evil))).toContain("refusing global os.system");
    expect(refusal(withPickle([0x80, 0x02, 0x4b, 0x05]))).toContain("truncated");
    expect(refusal(withPickle([0x80, 0x02, 0x5d, 0x2e]))).toContain("checkpoint: is a list, expected a dict");
    expect(refusal(withPickle([0x80, 0x02, 0x5d, 0x2e, 0x2e]))).toContain("1 bytes after STOP");
  });
});

// ---------------------------------------------------------------------------------

describe("atomic replacement", () => {
  const payload = (n: number, fill: number) => new Uint8Array(n).fill(fill);
  /** Files in dir other than the given ones (temp files left behind). */
  const leftovers = (dir: string, keep: string[]) => fs.readdirSync(dir).filter((f) => !keep.includes(f));

  /** node:fs with one operation replaced. */
  function failingIo(override: Partial<FileIo>): FileIo {
    return { ...nodeIo, ...override };
  }
  const errno = (code: string) => Object.assign(new Error(`${code}: simulated`), { code });

  /** Mounts a tmpfs (root only); false when this machine does not allow it. */
  function mount(dir: string, options: string): boolean {
    const p = Bun.spawnSync(["mount", "-t", "tmpfs", "-o", options, "tmpfs", dir], { stderr: "pipe" });
    return p.exitCode === 0;
  }
  const umount = (dir: string) => Bun.spawnSync(["umount", dir]);

  test("replaces the file, keeps its permission bits, leaves no temp file", () => {
    const d = folder();
    const path = join(d, "f.bin");
    writeFileAtomic(path, [payload(10, 1)]);
    fs.chmodSync(path, 0o600);
    writeFileAtomic(path, [payload(100, 2), payload(50, 3)]);
    expect(fs.readFileSync(path)).toEqual(Buffer.concat([payload(100, 2), payload(50, 3)]));
    expect(fs.statSync(path).mode & 0o777).toBe(0o600);
    expect(leftovers(d, ["f.bin"])).toEqual([]);
  });

  test.each([
    ["ENOSPC in the middle of the data", { writeSync: (() => { let n = 0; return (fd: number, b: Uint8Array, o: number, l: number) => { if (++n === 3) throw errno("ENOSPC"); return fs.writeSync(fd, b, o, l); }; })() }, "no space left on device (ENOSPC)"],
    ["EIO on fsync", { fsyncSync: () => { throw errno("EIO"); } }, "input/output error (EIO)"],
    ["EACCES creating the temp file", { openSync: () => { throw errno("EACCES"); } }, "permission denied (EACCES)"],
  ] as const)("on %s the old file stays and no temp file is left", (_, override, cause) => {
    const d = folder();
    const path = join(d, "ckpt.pt");
    writeFileAtomic(path, [payload(1000, 7)]);
    const e = thrown(() => writeFileAtomic(path, [payload(1000, 1), payload(1000, 2), payload(1000, 3)], failingIo(override)));
    expect(e.message).toBe(`cannot write ${path}: ${cause}; the previous file is unchanged`);
    expect(fs.readFileSync(path)).toEqual(Buffer.from(payload(1000, 7)));
    expect(leftovers(d, ["ckpt.pt"])).toEqual([]);
  });

  test("a failing producer (the chunks' generator throws) leaves the old file and no temp file", () => {
    const d = folder();
    const path = join(d, "ckpt.pt");
    writeFileAtomic(path, [payload(10, 7)]);
    function* chunks() {
      yield payload(10, 1);
      throw new Error("pickling failed");
    }
    expect(thrown(() => writeFileAtomic(path, chunks())).message).toBe(`cannot write ${path}: pickling failed; the previous file is unchanged`);
    expect(fs.readFileSync(path)).toEqual(Buffer.from(payload(10, 7)));
    expect(leftovers(d, ["ckpt.pt"])).toEqual([]);
  });

  test("a rename that fails for real (the target is a folder) removes the temp file", () => {
    const d = folder();
    fs.mkdirSync(join(d, "x.pt"));
    const e = thrown(() => writeFileAtomic(join(d, "x.pt"), [payload(10, 1)]));
    expect(e.message).toContain(`cannot write ${join(d, "x.pt")}: `);
    expect(leftovers(d, ["x.pt"])).toEqual([]);
  });

  test("a full disk (a 256 KiB tmpfs) refuses a checkpoint: the old one still loads, no temp file is left", () => {
    const d = folder();
    const mounted = mount(d, "size=256k");
    try {
      const path = join(d, "latest.pt");
      const small: Checkpoint = sampleCheckpoint({ opt: null });
      saveCheckpoint(path, small);
      const big: ModelCfg = { V: 256, T: 32, C: 64, L: 2, H: 2, d_ff: 128 }; // ~0.5 MB with AdamW state
      const n = numParams(big);
      const ck: Checkpoint = {
        modelCfg: big, trainCfg: {}, params: initParams(big, 1), step: 1, bestValLoss: null,
        opt: { m: new Float32Array(n), v: new Float32Array(n), step: 1, hparams: { lr: 1e-3, weightDecay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8 } },
      };
      // Without mount permission (not root, or a container without it) the same failure is injected.
      const io = mounted ? undefined : failingIo({ writeSync: (() => { let total = 0; return (fd: number, b: Uint8Array, o: number, l: number) => { total += l; if (total > 200_000) throw errno("ENOSPC"); return fs.writeSync(fd, b, o, l); }; })() });
      const e = thrown(() => (io ? writeFileAtomic(path, torchSaveChunks(encodeCheckpoint(ck), { archiveName: "latest" }), io) : saveCheckpoint(path, ck)));
      expect(e.message).toBe(`cannot write ${path}: no space left on device (ENOSPC); the previous file is unchanged`);
      const back = loadCheckpoint(path);
      expect(bitsEqual(back.params, small.params)).toBe(true);
      expect(leftovers(d, ["latest.pt"])).toEqual([]);
    } finally {
      if (mounted) umount(d);
    }
  });

  test("a read-only folder refuses the write and keeps the old file", () => {
    const d = folder();
    const path = join(d, "best.pt");
    let how: "ro-mount" | "chmod" | "injected" = "injected";
    if (mount(d, "size=1m")) how = "ro-mount";
    else if (process.getuid?.() !== 0) how = "chmod";
    try {
      writeFileAtomic(path, [payload(100, 5)]);
      if (how === "ro-mount") Bun.spawnSync(["mount", "-o", "remount,ro", d]);
      if (how === "chmod") fs.chmodSync(d, 0o555);
      const io = how === "injected" ? failingIo({ openSync: () => { throw errno("EROFS"); } }) : undefined;
      const e = thrown(() => writeFileAtomic(path, [payload(200, 6)], io));
      expect(e.message).toMatch(new RegExp(`^cannot write ${path}: (read-only file system \\(EROFS\\)|permission denied \\(EACCES\\)); the previous file is unchanged$`));
      expect(fs.readFileSync(path)).toEqual(Buffer.from(payload(100, 5)));
      expect(leftovers(d, ["best.pt"])).toEqual([]);
    } finally {
      if (how === "ro-mount") umount(d);
      if (how === "chmod") fs.chmodSync(d, 0o755);
    }
  });
});
