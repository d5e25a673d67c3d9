/**
 * The C ABI of the native library under bad input and edge cases: every bad argument
 * comes back to TypeScript as an error with the library's message, never a crash;
 * training is deterministic; a batch without targets and a non-finite step are handled.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Pointer } from "bun:ffi";
import { NativeError, NativeModel, openLibrary, type HParams, type NativeLibrary } from "../src/backend/native.ts";
import type { ModelCfg } from "../src/model/config.ts";
import { initParams, numParams } from "../src/model/layout.ts";
import { Rng } from "../src/util/random.ts";
import { buildNative } from "../scripts/build-native.ts";

const CFG: ModelCfg = { V: 67, T: 9, C: 24, L: 2, H: 3, d_ff: 40 };
const B = 3;
// big enough that every kernel splits its work over two threads (small loops stay on one)
const CFG_MT: ModelCfg = { V: 512, T: 64, C: 64, L: 2, H: 4, d_ff: 256 };
const B_MT = 8;
const HP: HParams = { lr: 1e-2, weightDecay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, gradClip: 1.0 };

let lib: NativeLibrary;

beforeAll(async () => {
  await buildNative({ quiet: true });
  lib = openLibrary();
}, 120_000);

function tokens(seed: number, cfg: ModelCfg = CFG, b = B): { x: Int32Array; y: Int32Array } {
  const rng = new Rng(seed);
  const n = b * cfg.T;
  const x = new Int32Array(n);
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    x[i] = rng.below(cfg.V);
    y[i] = rng.below(cfg.V);
  }
  return { x, y };
}

function openModel(cfg: ModelCfg = CFG, b = B, threads = 0): NativeModel {
  const m = NativeModel.open(cfg, b, "cpu", lib);
  if (threads > 0) m.setThreads(threads);
  m.setParams(initParams(cfg, 5));
  m.setOptState(null, null, 0);
  return m;
}

/** NativeModel.open's error message for cfg (fails the test if it opens). */
function openError(cfg: ModelCfg, b = B): string {
  try {
    NativeModel.open(cfg, b, "cpu", lib).close();
  } catch (e) {
    expect(e).toBeInstanceOf(NativeError);
    return (e as Error).message;
  }
  throw new Error(`NativeModel.open(${JSON.stringify(cfg)}, ${b}) succeeded`);
}

function errorOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(NativeError);
    return (e as Error).message;
  }
  throw new Error("expected a NativeError");
}

describe("gpt_create rejects bad configurations with a message", () => {
  test("C not divisible by H", () => {
    expect(openError({ ...CFG, C: 25, H: 3 })).toContain("C=25 is not divisible by H=3");
  });
  test("V < 1 and T < 1, and every other key", () => {
    expect(openError({ ...CFG, V: 0 })).toContain("V=0 is invalid");
    expect(openError({ ...CFG, T: -3 })).toContain("T=-3 is invalid");
    for (const key of ["C", "L", "H", "d_ff"] as const) {
      expect(openError({ ...CFG, [key]: 0 })).toContain(`${key}=0 is invalid`);
    }
    expect(openError(CFG, 0)).toContain("batch size B=0 is invalid");
  });
  test("absurd sizes: overflow and memory are refused, not attempted", () => {
    expect(openError({ ...CFG, V: 2 ** 30 })).toContain("V=1073741824 is invalid");
    expect(openError({ V: 1 << 24, T: 1 << 24, C: 1 << 24, L: 1 << 24, H: 1, d_ff: 1 << 24 })).toMatch(/too large|too many/);
    expect(openError({ ...CFG, T: 1 << 20 }, 1 << 20)).toContain("too many");
    expect(openError({ ...CFG, V: 1 << 24, C: 1 << 16, H: 1 })).toContain("too large");
  });
  test("unknown or unavailable device", () => {
    const err = new Uint8Array(256);
    const h = lib.gpt_create(Int32Array.of(CFG.V, CFG.T, CFG.C, CFG.L, CFG.H, CFG.d_ff), B, 7, null, err, err.length);
    expect(h).toBeNull();
    expect(new TextDecoder().decode(err.subarray(0, err.indexOf(0)))).toContain("unknown device 7");
    if (process.platform !== "darwin") {
      expect(lib.gpt_device_available(1)).toBe(0);
      expect(() => NativeModel.open(CFG, B, "mps", lib)).toThrow("not available");
    }
    expect(lib.gpt_device_available(0)).toBe(1);
  });
  test("options out of range are refused with the option's name", () => {
    const err = new Uint8Array(256);
    const cfg = Int32Array.of(CFG.V, CFG.T, CFG.C, CFG.L, CFG.H, CFG.d_ff);
    // gpt_options: profile, recompute, head_chunk_rows, lanes, lane_help, mps_embedding
    for (const [i, name] of [[1, "recompute"], [2, "head_chunk_rows"], [3, "lanes"], [5, "mps_embedding"]] as const) {
      const opts = new Int32Array(6);
      opts[i] = -1;
      expect(lib.gpt_create(cfg, B, 0, opts, err, err.length)).toBeNull();
      expect(new TextDecoder().decode(err.subarray(0, err.indexOf(0)))).toContain(`option ${name}=-1 is invalid`);
    }
    const p = lib.gpt_create(cfg, B, 0, new Int32Array(6), err, err.length); // zeroed: the defaults
    expect(p).not.toBeNull();
    lib.gpt_free(p);
  });
  test("gpt_num_params agrees with the TypeScript layout, -1 for a bad cfg", () => {
    expect(Number(lib.gpt_num_params(Int32Array.of(CFG.V, CFG.T, CFG.C, CFG.L, CFG.H, CFG.d_ff)))).toBe(numParams(CFG));
    expect(Number(lib.gpt_num_params(Int32Array.of(CFG.V, CFG.T, 25, CFG.L, 3, CFG.d_ff)))).toBe(-1);
    expect(Number(lib.gpt_num_params(null))).toBe(-1);
  });
});

describe("bad token ids and hyperparameters come back as errors", () => {
  let model: NativeModel;
  beforeAll(() => {
    model = openModel();
  });
  afterAll(() => model.close());

  test("a target id >= V, < -100 or in (-100, 0)", () => {
    for (const bad of [CFG.V, -101, -1, -99]) {
      const { x, y } = tokens(1);
      y[4] = bad;
      expect(errorOf(() => model.trainStep(x, y, HP))).toContain(`y[4] (batch row 0, position 4) = ${bad} is invalid`);
      expect(errorOf(() => model.evalLoss(x, y))).toContain(`= ${bad} is invalid`);
      expect(errorOf(() => model.computeGrads(x, y))).toContain(`= ${bad} is invalid`);
    }
  });
  test("an input id >= V or < 0", () => {
    for (const bad of [CFG.V, 1 << 30, -1]) {
      const { x, y } = tokens(2);
      x[CFG.T + 1] = bad;
      expect(errorOf(() => model.trainStep(x, y, HP))).toContain(`x[${CFG.T + 1}] (batch row 1, position 1) = ${bad} is out of range`);
      expect(errorOf(() => model.evalLoss(x, y))).toContain("is out of range");
    }
  });
  test("invalid hyperparameters", () => {
    const { x, y } = tokens(3);
    expect(errorOf(() => model.trainStep(x, y, { ...HP, lr: Number.NaN }))).toContain("learning rate");
    expect(errorOf(() => model.trainStep(x, y, { ...HP, eps: 0 }))).toContain("eps");
    expect(errorOf(() => model.trainStep(x, y, { ...HP, beta2: 1 }))).toContain("betas");
    expect(errorOf(() => model.trainStep(x, y, { ...HP, weightDecay: -1 }))).toContain("weight_decay");
    expect(errorOf(() => model.setThreads(0))).toContain("thread count 0");
  });
  test("a rejected call changes nothing and the model keeps working", () => {
    const before = model.getParams();
    const { x, y } = tokens(4);
    y[0] = CFG.V + 5;
    expect(() => model.trainStep(x, y, HP)).toThrow(NativeError);
    expect(model.getParams()).toEqual(before);
    expect(model.getOptState().step).toBe(0);
    y[0] = 1;
    const r = model.trainStep(x, y, HP);
    expect(r.applied).toBe(true);
    expect(Number.isFinite(r.loss)).toBe(true);
  });
  test("ranged state I/O (checkpoints in bounded memory) reads and writes exactly the whole-buffer calls' values", () => {
    const { x, y } = tokens(5);
    model.trainStep(x, y, HP); // moments and weights all nonzero
    const P = model.numParams;
    const params = model.getParams();
    const opt = model.getOptState();
    // odd chunk sizes cross every tensor boundary
    for (const [which, whole] of [["params", params], ["m", opt.m], ["v", opt.v]] as const) {
      const back = new Float32Array(P);
      for (let at = 0; at < P; at += 1237) model.readState(which, at, back.subarray(at, Math.min(P, at + 1237)));
      expect(back).toEqual(new Float32Array(whole));
    }
    expect(model.optStep()).toBe(opt.step);
    // write back a changed state range by range: the whole-buffer getters see it, the step stays
    const shifted = (a: Float32Array) => a.map((q) => q * 0.5 + 1);
    model.resetOptState(opt.step);
    expect(model.getOptState().m.every((q) => q === 0)).toBe(true);
    for (const [which, whole] of [["params", params], ["m", opt.m], ["v", opt.v]] as const) {
      const next = shifted(whole);
      for (let at = 0; at < P; at += 999) model.writeState(which, at, next.subarray(at, Math.min(P, at + 999)));
    }
    expect(model.getParams()).toEqual(shifted(params));
    expect(model.getOptState()).toEqual({ m: shifted(opt.m), v: shifted(opt.v), step: opt.step });
    // ranges outside the buffer and unknown buffers are refused, nothing copied
    expect(errorOf(() => model.readState("params", P - 3, new Float32Array(4)))).toContain(`range [${P - 3}, ${P - 3} + 4) is outside the ${P} floats`);
    expect(errorOf(() => model.writeState("m", -1, new Float32Array(1)))).toContain("is outside");
  });
});

describe("null pointers at the raw ABI return an error, never crash", () => {
  let h: Pointer;
  const n = B * CFG.T;
  beforeAll(() => {
    const err = new Uint8Array(256);
    const p = lib.gpt_create(Int32Array.of(CFG.V, CFG.T, CFG.C, CFG.L, CFG.H, CFG.d_ff), B, 0, null, err, err.length);
    if (p === null || typeof p === "bigint") throw new Error("gpt_create failed");
    h = p;
  });
  afterAll(() => lib.gpt_free(h));

  const last = () => String(lib.gpt_last_error(h));
  const x = new Int32Array(n);
  const y = new Int32Array(n);
  const hp = Float32Array.of(1e-3, 0, 0.9, 0.99, 1e-8, 1);
  const out = new Uint8Array(16);
  const f = new Float32Array(1);

  test("null buffers", () => {
    expect(lib.gpt_train_step(h, null, y, hp, out)).not.toBe(0);
    expect(last()).toContain("input token buffer x is NULL");
    expect(lib.gpt_train_step(h, x, null, hp, out)).not.toBe(0);
    expect(last()).toContain("target token buffer y is NULL");
    expect(lib.gpt_train_step(h, x, y, null, out)).not.toBe(0);
    expect(last()).toContain("hyperparameters pointer is NULL");
    expect(lib.gpt_train_step(h, x, y, hp, null)).not.toBe(0);
    expect(last()).toContain("result pointer is NULL");
    expect(lib.gpt_eval_loss(h, x, y, null)).not.toBe(0);
    expect(last()).toContain("loss pointer is NULL");
    expect(lib.gpt_set_params(h, null)).not.toBe(0);
    expect(last()).toContain("parameter buffer is NULL");
    expect(lib.gpt_get_params(h, null)).not.toBe(0);
    expect(lib.gpt_get_opt_state(h, null, null, null)).not.toBe(0);
    expect(lib.gpt_set_opt_state(h, new Float32Array(numParams(CFG)), null, 3)).not.toBe(0);
    expect(last()).toContain("v is NULL");
    expect(lib.gpt_set_opt_state(h, null, null, -1)).not.toBe(0);
    expect(last()).toContain("step -1 is invalid");
    expect(lib.gpt_read_state(h, 0, 0, 1, null)).not.toBe(0);
    expect(last()).toContain("gpt_read_state: buffer is NULL");
    expect(lib.gpt_write_state(h, 0, 0, 1, null)).not.toBe(0);
    expect(last()).toContain("gpt_write_state: buffer is NULL");
    expect(lib.gpt_write_state(h, 3, 0, 1, new Float32Array(1))).not.toBe(0);
    expect(last()).toContain("buffer 3 is unknown");
    expect(lib.gpt_compute_grads(h, x, y, f, null)).toBe(0); // grads NULL is allowed: loss only
  });
  test("null handle and null cfg", () => {
    expect(lib.gpt_train_step(null, x, y, hp, out)).not.toBe(0);
    expect(lib.gpt_set_threads(null, 2)).not.toBe(0);
    expect(String(lib.gpt_last_error(null))).toContain("null model handle");
    expect(lib.gpt_profile_report(null, new Uint8Array(8), 8)).toBe(0);
    lib.gpt_free(null);
    const err = new Uint8Array(128);
    expect(lib.gpt_create(null, B, 0, null, err, err.length)).toBeNull();
    expect(new TextDecoder().decode(err.subarray(0, err.indexOf(0)))).toContain("model cfg is NULL");
    expect(lib.gpt_create(null, B, 0, null, null, 0)).toBeNull();
  });
});

describe("training semantics", () => {
  test("two runs of 3 steps from the same parameters are bit-identical", () => {
    const run = () => {
      const m = openModel(CFG_MT, B_MT, 2);
      try {
        const losses: number[] = [];
        for (let s = 0; s < 3; s++) {
          const { x, y } = tokens(10 + s, CFG_MT, B_MT);
          losses.push(m.trainStep(x, y, HP).loss);
        }
        return { losses, params: m.getParams(), opt: m.getOptState() };
      } finally {
        m.close();
      }
    };
    const a = run();
    const b = run();
    expect(a.opt.step).toBe(3);
    expect(b.losses).toEqual(a.losses);
    expect(Buffer.from(b.params.buffer).equals(Buffer.from(a.params.buffer))).toBe(true);
    expect(Buffer.from(b.opt.m.buffer).equals(Buffer.from(a.opt.m.buffer))).toBe(true);
    expect(Buffer.from(b.opt.v.buffer).equals(Buffer.from(a.opt.v.buffer))).toBe(true);
    // and the steps did move the weights
    expect(a.params).not.toEqual(initParams(CFG_MT, 5));
  });

  test("one thread and two threads agree closely", () => {
    const grads = (threads: number) => {
      const m = openModel(CFG_MT, B_MT, threads);
      try {
        const { x, y } = tokens(20, CFG_MT, B_MT);
        return m.computeGrads(x, y);
      } finally {
        m.close();
      }
    };
    const a = grads(1);
    const b = grads(2);
    expect(Math.abs(a.loss - b.loss)).toBeLessThan(1e-5 * Math.abs(a.loss));
    let diff = 0;
    let scale = 0;
    for (let i = 0; i < a.grads.length; i++) {
      diff = Math.max(diff, Math.abs(a.grads[i]! - b.grads[i]!));
      scale = Math.max(scale, Math.abs(a.grads[i]!));
    }
    expect(diff / scale).toBeLessThan(1e-5);
  });

  test("a batch whose targets are all -100: loss 0, n_targets 0, no update", () => {
    const m = openModel();
    try {
      const { x } = tokens(30);
      const y = new Int32Array(x.length).fill(-100);
      const before = m.getParams();
      const r = m.trainStep(x, y, HP);
      expect(r).toEqual({ loss: 0, gradNorm: 0, applied: false, nTargets: 0 });
      expect(m.getParams()).toEqual(before);
      expect(m.getOptState().step).toBe(0);
      expect(m.evalLoss(x, y)).toBe(0);
      const g = m.computeGrads(x, y);
      expect(g.loss).toBe(0);
      expect(g.grads.every((v) => v === 0)).toBe(true);
    } finally {
      m.close();
    }
  });

  test("a non-finite loss leaves weights and optimizer state untouched", () => {
    const m = openModel();
    try {
      const { x, y } = tokens(40);
      m.trainStep(x, y, HP); // some optimizer state
      const params = m.getParams();
      params[x[0]! * CFG.C] = Number.NaN; // an embedding row the batch uses
      m.setParams(params);
      const opt = m.getOptState();
      const r = m.trainStep(x, y, HP);
      expect(r.applied).toBe(false);
      expect(Number.isNaN(r.loss) || Number.isNaN(r.gradNorm)).toBe(true);
      expect(r.nTargets).toBe(x.length);
      const after = m.getParams();
      expect(Buffer.from(after.buffer).equals(Buffer.from(params.buffer))).toBe(true);
      const opt2 = m.getOptState();
      expect(opt2.step).toBe(opt.step);
      expect(Buffer.from(opt2.m.buffer).equals(Buffer.from(opt.m.buffer))).toBe(true);
      expect(Buffer.from(opt2.v.buffer).equals(Buffer.from(opt.v.buffer))).toBe(true);
    } finally {
      m.close();
    }
  });

  test("the optimizer state round-trips, and the profile is empty without GPT_PROFILE", () => {
    const m = openModel();
    try {
      const { x, y } = tokens(50);
      m.trainStep(x, y, HP);
      const s = m.getOptState();
      m.setOptState(s.m, s.v, s.step);
      expect(m.getOptState()).toEqual(s);
      if (process.env.GPT_PROFILE !== "1") expect(m.profileReport()).toBe("");
    } finally {
      m.close();
    }
  });
});
