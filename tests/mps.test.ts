/**
 * The Apple GPU backend (native/mps, MPSGraph) against the CPU backend on the same
 * weights and batches: loss and gradients, 10 AdamW steps with clipping and weight
 * decay, run-to-run determinism, the non-finite guard, batches without targets, bad
 * input, and KV-cached decoding (logits of every position, greedy ids past T). Runs only on macOS with a Metal device; elsewhere every test is reported as
 * skipped. (On macOS the native library must be built: bun scripts/build-native.ts.)
 *
 * Relative error of a tensor = max |mps - cpu| / max |cpu| over its elements.
 */
import { describe, expect, test } from "bun:test";
import { initParams, paramLayout } from "../src/model/layout.ts";
import { deviceAvailable, NativeError, NativeModel, tensorLimitProblem } from "../src/backend/native.ts";
import { deviceSelfTest, runSelfTestInChild } from "../src/backend/selftest.ts";
import { generate } from "../src/sample/decoder.ts";
import { PARITY_HP, randomBatches, relErr, relScalar, tensorMismatches, type ParityCase } from "./helpers/compare.ts";

const MPS = process.platform === "darwin" && deviceAvailable("mps");
const SKIP_NOTE = MPS ? "" : " (skipped: needs macOS with a Metal device)";

const LOSS_TOL = 1e-4; // relative, loss of the same weights and batch
const GRAD_TOL = 1e-3; // relative, per tensor
const WEIGHT_TOL = 1e-3; // relative, per tensor, after STEPS steps
const STEPS = 10;

// As tests/parity.test.ts: clipping active every step (grad norm ~2-3), a weight decay
// large enough that decaying the wrong tensors is far outside the tolerance, eps 1e-5
// so that float32 rounding of near-zero gradients is not amplified by lr / eps.
const HP = PARITY_HP;

const CASES: ParityCase[] = [
  { name: "V97 T13 C48 L2 H4 (C/H=12), -100 targets", cfg: { V: 97, T: 13, C: 48, L: 2, H: 4, d_ff: 80 }, B: 3, maskFraction: 0.45, seed: 21 },
  { name: "V256 T32 C64 L2 H2, plain CE", cfg: { V: 256, T: 32, C: 64, L: 2, H: 2, d_ff: 256 }, B: 4, maskFraction: 0, seed: 22 },
];


/** Bitwise equality (NaN payloads included). */
function sameBits(a: Float32Array, b: Float32Array): boolean {
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  return ua.length === ub.length && ua.every((v, i) => v === ub[i]);
}

/** Runs fn with a fresh model per device holding the same parameters, then closes them. */
function withModels<T>(c: ParityCase, params: Float32Array, fn: (cpu: NativeModel, mps: NativeModel) => T): T {
  const cpu = NativeModel.open(c.cfg, c.B, "cpu");
  let mps: NativeModel | null = null;
  try {
    mps = NativeModel.open(c.cfg, c.B, "mps");
    for (const m of [cpu, mps]) {
      m.setParams(params);
      m.setOptState(null, null, 0);
    }
    return fn(cpu, mps);
  } finally {
    cpu.close();
    mps?.close();
  }
}

for (const c of CASES) {
  describe(`mps vs cpu: ${c.name}${SKIP_NOTE}`, () => {
    const layout = paramLayout(c.cfg);

    test.skipIf(!MPS)("same loss, eval loss and gradients on the same weights", () => {
      const params = initParams(c.cfg, c.seed);
      const [b] = randomBatches(c.cfg, c.B, c.maskFraction, 1, c.seed, 0x3b5);
      withModels(c, params, (cpu, mps) => {
        const ref = cpu.computeGrads(b!.x, b!.y);
        const got = mps.computeGrads(b!.x, b!.y);
        expect(relScalar(got.loss, ref.loss)).toBeLessThan(LOSS_TOL);
        expect(relScalar(mps.evalLoss(b!.x, b!.y), ref.loss)).toBeLessThan(LOSS_TOL);
        expect(tensorMismatches(layout, got.grads, ref.grads, GRAD_TOL)).toEqual([]);
        // every tensor has a nonzero gradient, so the comparison is not vacuous
        expect(tensorMismatches(layout, new Float32Array(ref.grads.length), ref.grads, 0.5).length).toBe(layout.length);
        // computing gradients changed nothing
        expect(sameBits(mps.getParams(), params)).toBe(true);
      });
    });

    test.skipIf(!MPS)(`${STEPS} AdamW steps with clipping and weight decay`, () => {
      const params = initParams(c.cfg, c.seed);
      const batches = randomBatches(c.cfg, c.B, c.maskFraction, 3, c.seed, 0x3b5);
      withModels(c, params, (cpu, mps) => {
        for (let s = 0; s < STEPS; s++) {
          const { x, y } = batches[s % batches.length]!;
          const r = cpu.trainStep(x, y, HP);
          const g = mps.trainStep(x, y, HP);
          expect(g.applied).toBe(true);
          expect(g.nTargets).toBe(r.nTargets);
          expect(g.gradNorm).toBeGreaterThan(2 * HP.gradClip); // clipping is active
          expect(relScalar(g.loss, r.loss)).toBeLessThan(LOSS_TOL);
          expect(relScalar(g.gradNorm, r.gradNorm)).toBeLessThan(GRAD_TOL);
        }
        const wCpu = cpu.getParams();
        const wMps = mps.getParams();
        expect(tensorMismatches(layout, wMps, wCpu, WEIGHT_TOL)).toEqual([]);
        // the steps moved every tensor beyond the tolerance (Adam's first step alone moves
        // each element with a nonzero gradient by lr = 3e-3, LayerNorm weights being 1)
        expect(tensorMismatches(layout, params, wCpu, 2 * WEIGHT_TOL).length).toBe(layout.length);
        const oCpu = cpu.getOptState();
        const oMps = mps.getOptState();
        expect(oMps.step).toBe(STEPS);
        expect(tensorMismatches(layout, oMps.m, oCpu.m, WEIGHT_TOL)).toEqual([]);
        expect(tensorMismatches(layout, oMps.v, oCpu.v, WEIGHT_TOL)).toEqual([]);
      });
    });
  });
}

describe(`mps backend${SKIP_NOTE}`, () => {
  const c = CASES[0]!;
  const layout = paramLayout(c.cfg);

  test.skipIf(!MPS)("two runs from the same state give identical losses and weights", () => {
    const params = initParams(c.cfg, 7);
    const batches = randomBatches(c.cfg, c.B, c.maskFraction, 3, c.seed, 0x3b5);
    const run = (): { losses: number[]; weights: Float32Array } => {
      const m = NativeModel.open(c.cfg, c.B, "mps");
      try {
        m.setParams(params);
        m.setOptState(null, null, 0);
        const losses = Array.from({ length: 6 }, (_, s) => m.trainStep(batches[s % 3]!.x, batches[s % 3]!.y, HP).loss);
        return { losses, weights: m.getParams() };
      } finally {
        m.close();
      }
    };
    const a = run();
    const b = run();
    expect(b.losses).toEqual(a.losses);
    expect(sameBits(b.weights, a.weights)).toBe(true);
  });

  test.skipIf(!MPS)("optimizer state round-trips: 3+3 steps equal 6 steps", () => {
    const params = initParams(c.cfg, 8);
    const batches = randomBatches(c.cfg, c.B, c.maskFraction, 3, c.seed, 0x3b5);
    const m1 = NativeModel.open(c.cfg, c.B, "mps");
    const m2 = NativeModel.open(c.cfg, c.B, "mps");
    try {
      m1.setParams(params);
      m1.setOptState(null, null, 0);
      for (let s = 0; s < 6; s++) m1.trainStep(batches[s % 3]!.x, batches[s % 3]!.y, HP);
      m2.setParams(params);
      m2.setOptState(null, null, 0);
      for (let s = 0; s < 3; s++) m2.trainStep(batches[s % 3]!.x, batches[s % 3]!.y, HP);
      // resume into a fresh model, as from a checkpoint
      const w = m2.getParams();
      const o = m2.getOptState();
      m2.close();
      const m3 = NativeModel.open(c.cfg, c.B, "mps");
      try {
        m3.setParams(w);
        m3.setOptState(o.m, o.v, o.step);
        for (let s = 3; s < 6; s++) m3.trainStep(batches[s % 3]!.x, batches[s % 3]!.y, HP);
        expect(sameBits(m3.getParams(), m1.getParams())).toBe(true);
        expect(m3.getOptState().step).toBe(6);
      } finally {
        m3.close();
      }
    } finally {
      m1.close();
    }
  });

  test.skipIf(!MPS)("a non-finite loss leaves weights and optimizer state untouched", () => {
    const params = initParams(c.cfg, 9);
    const [b] = randomBatches(c.cfg, c.B, c.maskFraction, 1, c.seed, 0x3b5);
    const m = NativeModel.open(c.cfg, c.B, "mps");
    try {
      m.setParams(params);
      m.setOptState(null, null, 0);
      m.trainStep(b!.x, b!.y, HP); // nonzero moments, step 1
      const before = m.getParams();
      const opt = m.getOptState();
      const poisoned = before.slice();
      const lnf = layout.find((p) => p.name === "transformer.ln_f.weight")!;
      poisoned[lnf.offset] = Number.NaN;
      m.setParams(poisoned);
      const r = m.trainStep(b!.x, b!.y, HP);
      expect(Number.isFinite(r.loss)).toBe(false);
      expect(r.applied).toBe(false);
      expect(sameBits(m.getParams(), poisoned)).toBe(true);
      const after = m.getOptState();
      expect(after.step).toBe(opt.step);
      expect(sameBits(after.m, opt.m)).toBe(true);
      expect(sameBits(after.v, opt.v)).toBe(true);
      // with the weights repaired, training goes on from the same state
      m.setParams(before);
      expect(m.trainStep(b!.x, b!.y, HP).applied).toBe(true);
      expect(m.getOptState().step).toBe(opt.step + 1);
    } finally {
      m.close();
    }
  });

  test.skipIf(!MPS)("a batch without counted targets: loss 0, no update, as the CPU backend", () => {
    const params = initParams(c.cfg, 10);
    const [b] = randomBatches(c.cfg, c.B, c.maskFraction, 1, c.seed, 0x3b5);
    const y = new Int32Array(b!.y.length).fill(-100);
    withModels(c, params, (cpu, mps) => {
      const r = cpu.trainStep(b!.x, y, HP);
      const g = mps.trainStep(b!.x, y, HP);
      expect(g).toEqual(r);
      expect(g).toEqual({ loss: 0, gradNorm: 0, applied: false, nTargets: 0 });
      expect(mps.evalLoss(b!.x, y)).toBe(cpu.evalLoss(b!.x, y));
      expect(sameBits(mps.getParams(), params)).toBe(true);
      expect(mps.getOptState().step).toBe(0);
    });
  });

  test.skipIf(!MPS)("gradClip 0 disables clipping, as on the CPU", () => {
    const params = initParams(c.cfg, 11);
    const [b] = randomBatches(c.cfg, c.B, c.maskFraction, 1, c.seed, 0x3b5);
    const hp = { ...HP, gradClip: 0 };
    withModels(c, params, (cpu, mps) => {
      const r = cpu.trainStep(b!.x, b!.y, hp);
      const g = mps.trainStep(b!.x, b!.y, hp);
      expect(relScalar(g.loss, r.loss)).toBeLessThan(LOSS_TOL);
      expect(tensorMismatches(layout, mps.getParams(), cpu.getParams(), WEIGHT_TOL)).toEqual([]);
    });
  });

  test.skipIf(!MPS)("bad token ids are refused with a message naming them", () => {
    const [b] = randomBatches(c.cfg, c.B, c.maskFraction, 1, c.seed, 0x3b5);
    const m = NativeModel.open(c.cfg, c.B, "mps");
    try {
      const x = b!.x.slice();
      x[5] = c.cfg.V;
      expect(() => m.evalLoss(x, b!.y)).toThrow(NativeError);
      expect(() => m.evalLoss(x, b!.y)).toThrow(/x\[5\]/);
      const y = b!.y.slice();
      y[7] = -1;
      expect(() => m.trainStep(b!.x, y, HP)).toThrow(/y\[7\]/);
      expect(m.getOptState().step).toBe(0);
    } finally {
      m.close();
    }
  });
});

describe(`mps self-test and size guard${SKIP_NOTE}`, () => {
  test.skipIf(!MPS)("the self-test passes on this Mac's GPU, in this process and in a child process", async () => {
    const here = deviceSelfTest("mps");
    expect(here.detail).toContain("vs cpu");
    expect(here.passed).toBe(true);
    const child = await runSelfTestInChild("mps");
    expect(child.passed).toBe(true);
  });

  test.skipIf(!MPS)("a model too large for the device is refused before anything is allocated", () => {
    const cfg = { V: 50257, T: 1024, C: 64, L: 1, H: 1, d_ff: 64 }; // logits of B=64: 13 GB
    const problem = tensorLimitProblem(cfg, 64, "mps");
    expect(problem).toStartWith("the logits");
    expect(() => NativeModel.open(cfg, 64, "mps")).toThrow(/gpt_create: the logits .* one tensor may hold on mps/);
    expect(tensorLimitProblem(cfg, 1, "mps")).toBeNull();
  });
});

// Off macOS the library is built without native/mps: it must say so, and refuse the device.
test.skipIf(process.platform === "darwin")("off macOS the library reports no mps device and refuses one", () => {
  expect(deviceAvailable("mps")).toBe(false);
  expect(() => NativeModel.open(CASES[0]!.cfg, 1, "mps")).toThrow(/mps is not available/);
});

describe(`mps decoding (KV cache) vs cpu${SKIP_NOTE}`, () => {
  const DECODE_TOL = 1e-4; // relative, logits of one position (the CPU's match PyTorch to 1e-5: tests/native-decode)
  for (const c of CASES) {
    test.skipIf(!MPS)(`${c.name}: the prompt pass and every step, to a full context and past it`, () => {
      const { cfg } = c;
      const params = initParams(cfg, c.seed).map((v, i) => v * 3 + (((i * 2654435761) % 1000) / 1000 - 0.5) * 0.1);
      const ids = Int32Array.from({ length: cfg.T }, (_, i) => (i * 37 + c.seed) % cfg.V);
      const prompt = Math.max(1, Math.floor(cfg.T / 3));
      const models = (["cpu", "mps"] as const).map((d) => NativeModel.open(cfg, 1, d));
      try {
        for (const m of models) m.setParams(params);
        const [cpu, mps] = models as [NativeModel, NativeModel];
        const all = [new Float32Array(prompt * cfg.V), new Float32Array(prompt * cfg.V)];
        cpu.decodeBegin(ids.subarray(0, prompt), all[0]!, true);
        mps.decodeBegin(ids.subarray(0, prompt), all[1]!, true);
        for (let t = 0; t < prompt; t++) {
          const row = (a: Float32Array) => a.subarray(t * cfg.V, (t + 1) * cfg.V);
          expect({ t, err: relErr(row(all[1]!), row(all[0]!)) < DECODE_TOL }).toEqual({ t, err: true });
        }
        const [a, b] = [new Float32Array(cfg.V), new Float32Array(cfg.V)];
        for (let t = prompt; t < cfg.T; t++) {
          cpu.decodeStep(ids[t]!, a);
          mps.decodeStep(ids[t]!, b);
          expect({ t, err: relErr(b, a) < DECODE_TOL }).toEqual({ t, err: true });
        }
        expect(() => mps.decodeStep(0, b)).toThrow(/context is full/);
        // greedy generation past T (the window slides) makes the same ids on both
        const made = models.map((m) => generate(m, ids.subarray(0, prompt), { temperature: 0, topK: 0, seed: 0, maxNewTokens: cfg.T + 5 }));
        expect(made[1]).toEqual(made[0]!);
      } finally {
        for (const m of models) m.close();
      }
    });
  }
});
