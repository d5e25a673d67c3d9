/**
 * Parity of the native CPU backend with PyTorch (interop/reference_gpt.py): the same
 * weights and batches give the same loss, the same gradients of every tensor, and the
 * same weights and AdamW moments after 5 steps with clipping active and weight decay.
 *
 * Relative error of a tensor = max |ours - torch| / max |torch| over its elements.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { ModelCfg } from "../src/model/config.ts";
import { initParams, paramLayout } from "../src/model/layout.ts";
import { NativeModel } from "../src/backend/native.ts";
import { PARITY_HP, randomBatches, relScalar, tensorMismatches, type ParityCase } from "./helpers/compare.ts";
import { makeTempDir, readF32, readJson, removeDir, runPython, torchVersion, writeArray, writeJson } from "./helpers/torch.ts";

const LOSS_TOL = 1e-5;
const GRAD_TOL = 1e-4;
const STEP_TOL = 1e-4;
const STEPS = 5;
const N_BATCHES = 3; // step s uses batch s mod 3; gradients use batch 0

const HP = PARITY_HP; // see tests/helpers/compare.ts

const SHAPE_ODD: ModelCfg = { V: 97, T: 13, C: 48, L: 2, H: 4, d_ff: 80 }; // T % 8 != 0, C/H = 12
const SHAPE_POW2: ModelCfg = { V: 256, T: 32, C: 64, L: 2, H: 2, d_ff: 256 };

const CASES: ParityCase[] = [
  { name: "V97 T13 C48 H4 (C/H=12), plain CE", cfg: SHAPE_ODD, B: 3, maskFraction: 0, seed: 11 },
  { name: "V97 T13 C48 H4 (C/H=12), -100 targets", cfg: SHAPE_ODD, B: 3, maskFraction: 0.45, seed: 12 },
  { name: "V256 T32 C64 H2, plain CE", cfg: SHAPE_POW2, B: 4, maskFraction: 0, seed: 13 },
  { name: "V256 T32 C64 H2, -100 targets", cfg: SHAPE_POW2, B: 4, maskFraction: 0.6, seed: 14 },
];

interface TorchOut {
  layout: Array<[string, number[]]>;
  loss: number;
  nTargets: number;
  steps: Array<{ loss: number; gradNorm: number; applied: boolean }>;
}

interface Prepared {
  dir: string;
  params: Float32Array;
  xs: Int32Array[];
  ys: Int32Array[];
  out: TorchOut;
}

function concat(arrays: Int32Array[]): Int32Array {
  const out = new Int32Array(arrays.reduce((s, a) => s + a.length, 0));
  let o = 0;
  for (const a of arrays) {
    out.set(a, o);
    o += a.length;
  }
  return out;
}

/** Two threads: B = 3 splits every op over them, B = 4 runs two batch-parallel lanes. */
function openTwoThreads(c: ParityCase): NativeModel {
  const model = NativeModel.open(c.cfg, c.B, "cpu");
  model.setThreads(2);
  return model;
}

const prepared = new Map<string, Prepared>();

beforeAll(() => {
  torchVersion(); // a clear error when python3 or torch is missing
  // batch-parallel lanes even at these tiny batches (see the two threads below)
  process.env.GPT_LANES = "all"; // read by NativeModel.open (nativeOptions)
  for (const c of CASES) {
    const dir = makeTempDir("parity-");
    const params = initParams(c.cfg, c.seed);
    const batches = randomBatches(c.cfg, c.B, c.maskFraction, N_BATCHES, c.seed, 0xba7c4);
    const xs = batches.map((b) => b.x);
    const ys = batches.map((b) => b.y);
    writeJson(join(dir, "cfg.json"), { ...c.cfg, B: c.B });
    writeArray(join(dir, "params.f32"), params);
    writeArray(join(dir, "x.i32"), concat(xs));
    writeArray(join(dir, "y.i32"), concat(ys));
    writeJson(join(dir, "hparams.json"), { ...HP, steps: STEPS, threads: 1 });
    prepared.set(c.name, { dir, params, xs, ys, out: undefined as unknown as TorchOut });
  }
  runPython("parity_driver.py", [...prepared.values()].map((p) => p.dir));
  for (const p of prepared.values()) p.out = readJson<TorchOut>(join(p.dir, "out.json"));
});

afterAll(() => {
  delete process.env.GPT_LANES;
  for (const p of prepared.values()) removeDir(p.dir);
});

for (const c of CASES) {
  describe(`parity with PyTorch: ${c.name}`, () => {
    test("the flat layout matches the reference module's state dict", () => {
      const p = prepared.get(c.name)!;
      const ours = paramLayout(c.cfg).map((s) => [s.name, s.shape]);
      expect(ours).toEqual(p.out.layout);
    });

    test("loss and every parameter gradient", () => {
      const p = prepared.get(c.name)!;
      const layout = paramLayout(c.cfg);
      const model = openTwoThreads(c);
      try {
        model.setParams(p.params);
        const { loss, grads } = model.computeGrads(p.xs[0]!, p.ys[0]!);
        expect(relScalar(loss, p.out.loss)).toBeLessThan(LOSS_TOL);
        // eval loss is the same forward pass
        expect(relScalar(model.evalLoss(p.xs[0]!, p.ys[0]!), p.out.loss)).toBeLessThan(LOSS_TOL);
        const ref = readF32(join(p.dir, "grads.f32"));
        expect(grads.length).toBe(ref.length);
        expect(tensorMismatches(layout, grads, ref, GRAD_TOL)).toEqual([]);
        // every tensor gets a nonzero gradient, so the comparison above is not vacuous
        expect(tensorMismatches(layout, new Float32Array(ref.length), ref, 0.5).length).toBe(layout.length);
      } finally {
        model.close();
      }
    });

    test(`${STEPS} AdamW steps with clipping and weight decay`, () => {
      const p = prepared.get(c.name)!;
      const layout = paramLayout(c.cfg);
      const model = openTwoThreads(c);
      try {
        model.setParams(p.params);
        model.setOptState(null, null, 0);
        for (let s = 0; s < STEPS; s++) {
          const k = s % N_BATCHES;
          const r = model.trainStep(p.xs[k]!, p.ys[k]!, HP);
          const t = p.out.steps[s]!;
          expect(r.applied).toBe(true);
          expect(r.nTargets).toBe(p.ys[k]!.filter((v) => v !== -100).length);
          // clipping is active in every step, in both implementations
          expect(t.gradNorm).toBeGreaterThan(2 * HP.gradClip);
          expect(r.gradNorm).toBeGreaterThan(2 * HP.gradClip);
          expect(relScalar(r.loss, t.loss)).toBeLessThan(s === 0 ? LOSS_TOL : STEP_TOL);
          expect(relScalar(r.gradNorm, t.gradNorm)).toBeLessThan(GRAD_TOL);
        }
        const after = readF32(join(p.dir, "params_after.f32"));
        expect(tensorMismatches(layout, model.getParams(), after, STEP_TOL)).toEqual([]);
        const { m, v, step } = model.getOptState();
        expect(step).toBe(STEPS);
        expect(tensorMismatches(layout, m, readF32(join(p.dir, "m_after.f32")), STEP_TOL)).toEqual([]);
        expect(tensorMismatches(layout, v, readF32(join(p.dir, "v_after.f32")), STEP_TOL)).toEqual([]);
        // the steps moved every tensor by much more than the tolerance
        expect(tensorMismatches(layout, p.params, after, 10 * STEP_TOL).length).toBe(layout.length);
      } finally {
        model.close();
      }
    });
  });
}
