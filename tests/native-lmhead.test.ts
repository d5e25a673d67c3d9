/**
 * Memory-saving paths of the CPU backend that PyTorch parity (tiny shapes) does not reach:
 *  - the LM head over the rows in chunks (logits of one chunk at a time, its backward
 *    right after its loss, dwte accumulated over the chunks) must give the same loss,
 *    gradients, eval loss and AdamW step as one chunk, with and without -100 targets;
 *  - GELU outputs and attention probabilities recomputed in backward (large models)
 *    must give bit for bit the results of keeping them (small models).
 *  - two threads running a batch-parallel lane each (half the batch, own gradient buffer,
 *    summed after) must agree with one lane whose every op is split over both threads;
 *  - a lane's ops run on its own thread or, when the other lane is done, on both: the
 *    results must be the same bit for bit.
 * GPT_HEAD_CHUNK_ROWS, GPT_RECOMPUTE, GPT_LANES and GPT_LANE_HELP are read by NativeModel.open (the native options): every setting
 * runs in its own process.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildNative } from "../scripts/build-native.ts";
import { relErr } from "./helpers/compare.ts";

const ROOT = join(import.meta.dir, "..");
// N = 4 * 40 = 160 rows, two lanes of 80 with two threads: chunks of 32 and 24 leave a
// partial last chunk in each lane, with and without -100 targets
const CHILD = `
import { writeFileSync } from "node:fs";
import { NativeModel } from "${ROOT}/src/backend/native.ts";
import { initParams } from "${ROOT}/src/model/layout.ts";
import { Rng } from "${ROOT}/src/util/random.ts";
const [out, mask] = process.argv.slice(-2);
const cfg = { V: 1000, T: 40, C: 32, L: 2, H: 2, d_ff: 64 };
const B = 4, n = B * cfg.T;
const m = NativeModel.open(cfg, B, "cpu");
m.setThreads(2);
m.setParams(initParams(cfg, 3));
m.setOptState(null, null, 0);
const rng = new Rng(5);
const x = new Int32Array(n), y = new Int32Array(n);
for (let i = 0; i < n; i++) {
  x[i] = rng.below(cfg.V);
  // mask: percent of -100 targets, or "half": every target of the first half of the batch
  const ignored = mask === "half" ? i < n / 2 : Number(mask) > 0 && rng.below(100) < Number(mask);
  y[i] = ignored ? -100 : rng.below(cfg.V);
}
const { loss, grads } = m.computeGrads(x, y);
const evalLoss = m.evalLoss(x, y);
const step = m.trainStep(x, y, { lr: 1e-2, weightDecay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, gradClip: 1.0 });
const params = m.getParams();
m.close();
writeFileSync(out + ".json", JSON.stringify({ loss, evalLoss, stepLoss: step.loss, norm: step.gradNorm }));
writeFileSync(out + ".grads", Buffer.from(grads.buffer));
writeFileSync(out + ".params", Buffer.from(params.buffer));
`;

interface Run {
  loss: number;
  evalLoss: number;
  stepLoss: number;
  norm: number;
  grads: Float32Array;
  params: Float32Array;
}

let dir: string;

beforeAll(async () => {
  await buildNative({ quiet: true });
  dir = mkdtempSync(join(tmpdir(), "lmhead-"));
}, 120_000);

afterAll(() => rmSync(dir, { recursive: true, force: true }));

// lanes "all": two threads run a lane each even at this tiny batch (GPT_LANES, see gpt.h)
function run(chunkRows: number, maskPct: number | "half", recompute = "", lanes = "all", help = ""): Run {
  const out = join(dir, `r${chunkRows}-${maskPct}-${recompute}-${lanes}-${help}`);
  const p = Bun.spawnSync([process.execPath, "-e", CHILD, out, String(maskPct)], {
    env: {
      ...process.env,
      GPT_HEAD_CHUNK_ROWS: String(chunkRows),
      GPT_RECOMPUTE: recompute,
      GPT_LANES: lanes,
      GPT_LANE_HELP: help,
    },
    stdout: "pipe",
    stderr: "pipe",
  });
  if (p.exitCode !== 0) throw new Error(`child failed: ${p.stderr.toString()}`);
  const f32 = (file: string) => {
    const b = readFileSync(file);
    return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  };
  return { ...JSON.parse(readFileSync(out + ".json", "utf8")), grads: f32(out + ".grads"), params: f32(out + ".params") };
}

describe("LM head in chunks", () => {
  for (const mask of [0, 40]) {
    test(`chunks of 32 and 24 rows == one chunk (${mask}% -100 targets)`, () => {
      const whole = run(100000, mask);
      expect(whole.loss).toBeGreaterThan(5);
      for (const rows of [32, 24]) {
        const c = run(rows, mask);
        expect(Math.abs(c.loss - whole.loss)).toBeLessThan(1e-6 * whole.loss);
        expect(Math.abs(c.evalLoss - whole.evalLoss)).toBeLessThan(1e-6 * whole.evalLoss);
        expect(Math.abs(c.stepLoss - whole.stepLoss)).toBeLessThan(1e-6 * whole.stepLoss);
        expect(Math.abs(c.norm - whole.norm)).toBeLessThan(1e-5 * whole.norm);
        expect(c.grads.length).toBe(whole.grads.length);
        expect(relErr(c.grads, whole.grads)).toBeLessThan(1e-5);
        expect(relErr(c.params, whole.params)).toBeLessThan(1e-4); // as parity.test.ts after AdamW
        // but not bit-identical everywhere: dwte really was summed chunk by chunk
        expect(relErr(c.grads, whole.grads)).toBeGreaterThan(0);
      }
    }, 60_000);
  }
});

/** b gave a's losses, norm, gradients and AdamW step bit for bit. */
function expectSameBits(b: Run, a: Run): void {
  expect(b.loss).toBe(a.loss);
  expect(b.evalLoss).toBe(a.evalLoss);
  expect(b.stepLoss).toBe(a.stepLoss);
  expect(b.norm).toBe(a.norm);
  expect(Buffer.from(b.grads.buffer).equals(Buffer.from(a.grads.buffer))).toBe(true);
  expect(Buffer.from(b.params.buffer).equals(Buffer.from(a.params.buffer))).toBe(true);
}

describe("recomputed activations", () => {
  test("recomputing GELU outputs and attention probabilities == keeping them, bit for bit", () => {
    const kept = run(64, 20, "0");
    expectSameBits(run(64, 20, "1"), kept);
  }, 60_000);
});

describe("batch-parallel lanes", () => {
  for (const mask of [0, 40, "half"] as const) {
    test(`two lanes of half the batch == one lane split op by op (${mask === "half" ? "first lane without a counted target" : `${mask}% -100 targets`})`, () => {
      const oneLane = run(32, mask, "", "1");
      const twoLanes = run(32, mask);
      expect(Math.abs(twoLanes.loss - oneLane.loss)).toBeLessThan(1e-6 * oneLane.loss);
      expect(Math.abs(twoLanes.evalLoss - oneLane.evalLoss)).toBeLessThan(1e-6 * oneLane.evalLoss);
      expect(Math.abs(twoLanes.norm - oneLane.norm)).toBeLessThan(1e-5 * oneLane.norm);
      expect(relErr(twoLanes.grads, oneLane.grads)).toBeLessThan(1e-5);
      expect(relErr(twoLanes.params, oneLane.params)).toBeLessThan(1e-4);
      // the weight gradients really were summed from two halves
      expect(relErr(twoLanes.grads, oneLane.grads)).toBeGreaterThan(0);
      // and each way is deterministic
      const again = run(32, mask);
      expect(Buffer.from(again.grads.buffer).equals(Buffer.from(twoLanes.grads.buffer))).toBe(true);
    }, 60_000);
  }
});

// GPT_LANE_HELP=test: lane 1 runs first, then lane 0 runs every op split over both threads
// (lane 1's thread as helper, even the tiniest loops); =0: every op of a lane on its own thread
describe("a lane helped by the thread of a lane that is done", () => {
  for (const mask of [0, 40] as const) {
    test(`every op on two threads == on one, bit for bit (${mask}% -100 targets)`, () => {
      const alone = run(32, mask, "", "all", "0");
      expectSameBits(run(32, mask, "", "all", "test"), alone);
    }, 60_000);
  }
});
