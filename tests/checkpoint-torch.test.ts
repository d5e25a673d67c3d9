/**
 * Checkpoints against real PyTorch (torch 1.13 at /usr/bin/python3, through
 * interop/torch_checkpoint_check.py):
 *  - files written by torch.save read with our reader: the same values, dtypes, strides,
 *    views and shared storages; protocol 2 files re-saved by our writer come out
 *    byte-identical;
 *  - files written by us read with torch.load: the spec's dict, tied storage, strict
 *    load into the reference model with the native model's loss, AdamW state that
 *    continues exactly like the native optimizer.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { NativeModel, type HParams } from "../src/backend/native.ts";
import { loadCheckpoint, saveCheckpoint, type Checkpoint } from "../src/checkpoint/checkpoint.ts";
import { PyDict, PyFloat, PyTuple, Storage, Tensor, type PyValue } from "../src/checkpoint/pyvalue.ts";
import { archiveNameFor, loadTorchFile, saveTorchFile, torchSaveChunks } from "../src/checkpoint/torchfile.ts";
import type { ModelCfg } from "../src/model/config.ts";
import { initParams, paramLayout, TIED_LM_HEAD } from "../src/model/layout.ts";
import { Rng } from "../src/util/random.ts";
import { describeValue } from "./fixtures/checkpoint/describe.ts";
import { tensorMismatches } from "./helpers/compare.ts";
import { makeTempDir, readF32, readJson, removeDir, runPython, torchVersion, writeJson } from "./helpers/torch.ts";

const SCRIPT = "torch_checkpoint_check.py";
const HOOK_TIMEOUT = 120_000; // hooks that start PyTorch (bun's hook default is 5 s)

interface Manifest {
  cfg: ModelCfg;
  train_cfg: Record<string, unknown>;
  files: Record<string, unknown>;
}

let torchDir = "";
let manifest: Manifest;

beforeAll(() => {
  torchVersion(); // a clear error when python3 or torch is missing
  torchDir = makeTempDir("ckpt-torch-");
  runPython(SCRIPT, ["make", torchDir]);
  manifest = readJson<Manifest>(join(torchDir, "manifest.json"));
}, HOOK_TIMEOUT);

afterAll(() => removeDir(torchDir));

function bitsEqual(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

describe("files written by torch.save, read by our reader", () => {
  const FILES = ["sd.pt", "adamw.pt", "ckpt.pt", "ckpt_nanogpt.pt", "misc.pt", "misc_p1.pt", "misc_p4.pt"];

  test.each(FILES)("%s: same values, dtypes, sizes, strides, offsets and shared storages as torch.load", (name) => {
    expect(describeValue(loadTorchFile(join(torchDir, name)))).toEqual(manifest.files[name]!);
  });

  test("the tied state dict shares one storage between lm_head.weight and transformer.wte.weight", () => {
    const sd = loadTorchFile(join(torchDir, "sd.pt")) as PyDict;
    const head = sd.get(TIED_LM_HEAD.name) as Tensor;
    const wte = sd.get(TIED_LM_HEAD.tiedTo) as Tensor;
    expect(head.storage).toBe(wte.storage);
    // nanoGPT's state_dict() carries its _metadata attribute (pickle BUILD)
    expect(sd.attrs?.has("_metadata")).toBe(true);
  });

  test.each(["sd.pt", "adamw.pt", "ckpt.pt", "ckpt_nanogpt.pt", "misc.pt"])(
    "%s re-saved by our writer is byte-identical to torch.save's file",
    (name) => {
      const theirs = readFileSync(join(torchDir, name));
      const ours = Buffer.concat([...torchSaveChunks(loadTorchFile(join(torchDir, name)), { archiveName: archiveNameFor(name) })]);
      expect(ours.length).toBe(theirs.length);
      expect(ours.equals(theirs)).toBe(true);
    },
  );

  test("a checkpoint dict saved by torch loads as a checkpoint: weights, AdamW moments, step, best_val_loss", () => {
    const ck = loadCheckpoint(join(torchDir, "ckpt.pt"), manifest.cfg);
    expect(ck.modelCfg).toEqual(manifest.cfg);
    expect(ck.trainCfg).toEqual(manifest.train_cfg);
    expect(bitsEqual(ck.params, readF32(join(torchDir, "params.f32")))).toBe(true);
    expect(ck.opt).not.toBeNull();
    expect(bitsEqual(ck.opt!.m, readF32(join(torchDir, "m.f32")))).toBe(true);
    expect(bitsEqual(ck.opt!.v, readF32(join(torchDir, "v.f32")))).toBe(true);
    expect(ck.opt!.step).toBe(2);
    expect(ck.opt!.hparams).toEqual({ lr: 1e-3, weightDecay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8 });
    expect(ck.step).toBe(2);
    expect(ck.bestValLoss).toBe(3.25);
  });

  test("nanoGPT habits load: _orig_mod. names, attn.bias buffers, no lm_head.weight, 0-dim best_val_loss, no optimizer", () => {
    const ck = loadCheckpoint(join(torchDir, "ckpt_nanogpt.pt"));
    expect(bitsEqual(ck.params, readF32(join(torchDir, "params.f32")))).toBe(true);
    expect(ck.opt).toBeNull();
    expect(ck.bestValLoss).toBe(3.25);
  });
});

// ---------------------------------------------------------------------------------

const CFG: ModelCfg = { V: 61, T: 12, C: 32, L: 2, H: 4, d_ff: 72 };
const B = 3;
// eps 1e-5 (not 1e-8): with tiny second moments Adam amplifies float32 rounding of the
// gradients (see tests/parity.test.ts); clipping at 0.5 is active for these shapes.
const HP: HParams = { lr: 2e-3, weightDecay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-5, gradClip: 0.5 };
const TRAIN_CFG = {
  sources: { wiki: 0.784, roam: 0.196, primer: 0.02 },
  train_cfg: { B, base_lr: 0.002, min_lr: 0.0002, total_steps: 20000, grad_clip: 0.5, seed: 42 },
  val_source: "wiki",
  note: "unicode \u00e9\u2713",
  list: [1, 2.5, null, true],
};

function batch(rng: Rng): { x: Int32Array; y: Int32Array } {
  const x = Int32Array.from({ length: B * CFG.T }, () => rng.below(CFG.V));
  const y = Int32Array.from({ length: B * CFG.T }, () => rng.below(CFG.V));
  return { x, y };
}

interface CheckReport {
  keys: string[];
  types: Record<string, string>;
  model_cfg: unknown;
  train_cfg: unknown;
  step: number;
  best_val_loss: number;
  model_state_keys: string[];
  model_state_dtypes: string[];
  tied: boolean;
  distinct_storages: number;
  loss: number;
  param_groups: Array<Record<string, unknown>>;
  state_steps: number[];
  state_step_dtypes: string[];
  step_loss: number;
}

describe("files written by us, read by torch.load", () => {
  let dir = "";
  let ckpt: Checkpoint;
  let nativeLoss = 0;
  let nativeStepLoss = 0;
  let after: { params: Float32Array; m: Float32Array; v: Float32Array };
  let report: CheckReport;

  beforeAll(() => {
    dir = makeTempDir("ckpt-ours-");
    const rng = new Rng(2024, 7);
    const model = NativeModel.open(CFG, B, "cpu");
    try {
      model.setThreads(1);
      model.setParams(initParams(CFG, 5));
      model.setOptState(null, null, 0);
      for (let s = 0; s < 3; s++) {
        const { x, y } = batch(rng);
        expect(model.trainStep(x, y, HP).applied).toBe(true);
      }
      ckpt = { modelCfg: CFG, trainCfg: TRAIN_CFG, params: model.getParams(), opt: { ...model.getOptState(), hparams: HP }, step: 3, bestValLoss: 4.125 };
      saveCheckpoint(join(dir, "latest.pt"), ckpt);

      const evalBatch = batch(rng);
      const stepBatch = batch(rng);
      nativeLoss = model.evalLoss(evalBatch.x, evalBatch.y);
      nativeStepLoss = model.trainStep(stepBatch.x, stepBatch.y, HP).loss;
      after = { params: model.getParams(), ...model.getOptState() };
      writeJson(join(dir, "batch.json"), {
        B,
        x: [...evalBatch.x],
        y: [...evalBatch.y],
        x2: [...stepBatch.x],
        y2: [...stepBatch.y],
        lr: HP.lr,
        grad_clip: HP.gradClip,
      });
    } finally {
      model.close();
    }
    runPython(SCRIPT, ["check", join(dir, "latest.pt"), dir]);
    report = readJson<CheckReport>(join(dir, "check.json"));
  }, HOOK_TIMEOUT);

  afterAll(() => removeDir(dir));

  test("torch.load gives the spec's dict, in order, with Python types", () => {
    expect(report.keys).toEqual(["model_cfg", "train_cfg", "model_state", "optimizer_state", "step", "best_val_loss"]);
    expect(report.types).toEqual({
      model_cfg: "dict",
      train_cfg: "dict",
      model_state: "OrderedDict",
      optimizer_state: "dict",
      step: "int",
      best_val_loss: "float",
    });
    expect(report.model_cfg).toEqual(CFG);
    expect(report.train_cfg).toEqual(TRAIN_CFG);
    expect(report.step).toBe(3);
    expect(report.best_val_loss).toBe(4.125);
  });

  test("model_state: nanoGPT names in state_dict order, lm_head.weight last and sharing wte's storage", () => {
    const names = paramLayout(CFG).map((p) => p.name);
    expect(report.model_state_keys).toEqual([...names, TIED_LM_HEAD.name]);
    expect(report.model_state_dtypes).toEqual(["torch.float32"]);
    expect(report.tied).toBe(true);
    expect(report.distinct_storages).toBe(names.length);
  });

  test("load_state_dict(strict=True) into the reference model gives the native model's loss", () => {
    expect(Math.abs(report.loss - nativeLoss) / nativeLoss).toBeLessThan(1e-5);
  });

  test("optimizer_state loads into AdamW with nanoGPT's groups: torch 1.13 keys, hyper-parameters, 0-dim float step", () => {
    const nDecay = paramLayout(CFG).filter((p) => p.decay).length;
    const nAll = paramLayout(CFG).length;
    const common = { lr: HP.lr, betas: [HP.beta1, HP.beta2], eps: HP.eps, amsgrad: false, foreach: null, maximize: false, capturable: false };
    expect(report.param_groups).toEqual([
      { weight_decay: HP.weightDecay, ...common, n_params: nDecay },
      { weight_decay: 0, ...common, n_params: nAll - nDecay },
    ]);
    expect(Object.keys(report.param_groups[0]!)).toEqual(["weight_decay", "lr", "betas", "eps", "amsgrad", "foreach", "maximize", "capturable", "n_params"]);
    expect(report.state_steps).toEqual([3]);
    expect(report.state_step_dtypes).toEqual(["torch.float32()"]);
  });

  test("one more AdamW step in torch from the checkpoint matches one more native step", () => {
    expect(Math.abs(report.step_loss - nativeStepLoss) / nativeStepLoss).toBeLessThan(1e-5);
    expect(tensorMismatches(paramLayout(CFG), after.params, readF32(join(dir, "after_params.f32")), 1e-5)).toEqual([]);
    expect(tensorMismatches(paramLayout(CFG), after.m, readF32(join(dir, "after_m.f32")), 1e-5)).toEqual([]);
    expect(tensorMismatches(paramLayout(CFG), after.v, readF32(join(dir, "after_v.f32")), 1e-5)).toEqual([]);
  });

  test("torch.save of the dict torch loaded reads back with loadCheckpoint to the same checkpoint", () => {
    const back = loadCheckpoint(join(dir, "resaved.pt"), CFG);
    expect(bitsEqual(back.params, ckpt.params)).toBe(true);
    expect(bitsEqual(back.opt!.m, ckpt.opt!.m)).toBe(true);
    expect(bitsEqual(back.opt!.v, ckpt.opt!.v)).toBe(true);
    expect(back.opt!.step).toBe(3);
    expect(back.opt!.hparams).toEqual({ lr: HP.lr, weightDecay: HP.weightDecay, beta1: HP.beta1, beta2: HP.beta2, eps: HP.eps });
    expect(back.trainCfg).toEqual(TRAIN_CFG);
    expect(back.step).toBe(3);
    expect(back.bestValLoss).toBe(4.125);
  });
});

// ---------------------------------------------------------------------------------

/** Values of every kind the writer supports, with views, shared objects and storages. */
function everyKind(withEmptyTensor: boolean): PyValue {
  const base = new Storage("float32", Float32Array.from({ length: 12 }, (_, i) => i * 0.5 - 2));
  const shared: PyValue[] = [1, "two", new PyFloat(3)];
  const pair = new PyTuple([new PyFloat(0.9), new PyFloat(0.95)]);
  return new PyDict(false, [
    ["ints", [0, 1, 255, 256, 65535, 65536, 2 ** 31 - 1, 2 ** 31, -1, -(2 ** 31), -(2 ** 31) - 1, Number.MAX_SAFE_INTEGER, 2n ** 64n, -(2n ** 200n)]],
    ["floats", [new PyFloat(0), new PyFloat(-0), 0.1, -2.5, 1e300, 5e-324, Infinity, -Infinity, NaN]],
    ["strings", ["", "plain", "h\u00e9llo \u2713 \u{1F680}", ...Array.from({ length: 300 }, (_, i) => `k${i}`), "k299"]],
    ["tuples", [new PyTuple([]), new PyTuple([1]), new PyTuple([1, 2]), new PyTuple([1, 2, 3]), new PyTuple([1, 2, 3, 4])]],
    ["shared", [shared, shared, pair, pair]],
    ["int_keys", new PyDict(false, [[0, "a"], [-7, "b"], [2n ** 70n, "c"], ["0", "d"]])],
    ["ordered", new PyDict(true, [["z", true], ["a", false], ["n", null]])],
    ["bytes", [Uint8Array.of(0, 255, 97), new Uint8Array(0)]],
    ["tensors", new PyDict(true, [
      ["base", new Tensor(base, [3, 4])],
      ["transposed", new Tensor(base, [4, 3], [1, 4])],
      ["row", new Tensor(base, [4], [1], 4)],
      ["column", new Tensor(base, [3], [4], 2)],
      ["int64", Tensor.of(BigInt64Array.of(1n, -2n, 2n ** 40n), [3])],
      ["int32", Tensor.of(Int32Array.of(1, -2, 3), [3])],
      ["int16", Tensor.of(Int16Array.of(1, -2, 3), [3])],
      ["int8", Tensor.of(Int8Array.of(1, -2, 3), [3])],
      ["uint8", Tensor.of(Uint8Array.of(1, 2, 255), [3])],
      ["bool", Tensor.of(Uint8Array.of(1, 0, 1), [3], "bool")],
      ["float64", Tensor.of(Float64Array.of(0.1, -1e200), [2])],
      ["float16", Tensor.of(Uint16Array.of(0x3e00, 0xc000), [2], "float16")],
      ["bfloat16", Tensor.of(Uint16Array.of(0x3fc0, 0xc000), [2], "bfloat16")],
      ["scalar", Tensor.of(Float32Array.of(3.5), [])],
      ...(withEmptyTensor ? [["empty", Tensor.of(new Float32Array(0), [0, 3])] as const] : []),
    ])],
  ]);
}

describe("values of every kind written by us, read by torch.load", () => {
  let dir = "";
  beforeAll(() => {
    dir = makeTempDir("ckpt-kinds-");
  });
  afterAll(() => removeDir(dir));

  // ZIP64 forced on every record. An empty record would get a ZIP64 offset but 32-bit
  // sizes, which torch's miniz only accepts in archives really larger than 4 GiB (it checks
  // the raw 32-bit offset + size against the archive size), so that variant has none.
  test.each([
    ["plain", {}, true],
    ["ZIP64 records forced", { zip64Threshold: 1 }, false],
  ] as const)("%s: torch.load describes it as we do, and our reader reads it back", (_, options, withEmpty) => {
    const value = everyKind(withEmpty);
    const path = join(dir, "kinds.pt");
    saveTorchFile(path, value, options);
    runPython(SCRIPT, ["describe", path, join(dir, "kinds.json")]);
    const expected = describeValue(value);
    expect(readJson<unknown>(join(dir, "kinds.json"))).toEqual(expected);
    expect(describeValue(loadTorchFile(path))).toEqual(expected);
  });
});
