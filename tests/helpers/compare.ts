/**
 * What the parity tests share (PyTorch vs CPU, MPS vs CPU): their cases and AdamW
 * settings, random batches shaped like SFT masking, and the relative errors they are
 * judged by.
 */
import type { HParams } from "../../src/backend/native.ts";
import type { ModelCfg } from "../../src/model/config.ts";
import type { ParamSpec } from "../../src/model/layout.ts";
import { Rng } from "../../src/util/random.ts";

export interface ParityCase {
  name: string;
  cfg: ModelCfg;
  B: number;
  maskFraction: number; // share of targets set to -100
  seed: number;
}

// gradClip 0.1: the grad norm is ~2-3, so clipping scales every step. weightDecay 0.5 at
// lr 3e-3 moves 2-D weights by ~1e-4 per step: a decay applied to the wrong tensors (or
// not at all) is far outside the tolerance. eps 1e-5 rather than 1e-8: Adam maps a
// gradient element near 0 to about lr * g / (|g| + eps), whose slope lr / eps amplifies
// float32 rounding; with eps 1e-8 torch float32 and torch float64 already differ by
// 3e-4 after 5 steps, with 1e-5 by < 1e-5 (measured for these shapes).
export const PARITY_HP: HParams = { lr: 3e-3, weightDecay: 0.5, beta1: 0.9, beta2: 0.95, eps: 1e-5, gradClip: 0.1 };

export interface Batch {
  x: Int32Array;
  y: Int32Array;
}

/**
 * `count` batches of random tokens, drawn from (seed, stream). With maskFraction > 0 each
 * row gets a masked prefix of random length and scattered -100s, and the first row is
 * fully masked, as SFT masking produces.
 */
export function randomBatches(cfg: ModelCfg, B: number, maskFraction: number, count: number, seed: number, stream: number): Batch[] {
  const rng = new Rng(seed, stream);
  const n = B * cfg.T;
  const out: Batch[] = [];
  for (let k = 0; k < count; k++) {
    const x = new Int32Array(n);
    const y = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      x[i] = rng.below(cfg.V);
      y[i] = rng.below(cfg.V);
    }
    if (maskFraction > 0) {
      for (let b = 0; b < B; b++) {
        const prefix = rng.below(Math.floor(cfg.T * maskFraction) + 1);
        for (let t = 0; t < cfg.T; t++) {
          if (t < prefix || rng.uniform() < maskFraction / 2) y[b * cfg.T + t] = -100;
        }
      }
      y.fill(-100, 0, cfg.T);
    }
    out.push({ x, y });
  }
  return out;
}

/** max |ours - ref| over max |ref| (Infinity when ours has a non-finite value). */
export function relErr(ours: Float32Array, ref: Float32Array): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < ref.length; i++) {
    if (!Number.isFinite(ours[i]!)) return Infinity;
    diff = Math.max(diff, Math.abs(ours[i]! - ref[i]!));
    scale = Math.max(scale, Math.abs(ref[i]!));
  }
  return scale > 0 ? diff / scale : diff;
}

/** "name: error" for every tensor whose relative error exceeds tol (empty when all agree). */
export function tensorMismatches(layout: ParamSpec[], ours: Float32Array, ref: Float32Array, tol: number): string[] {
  const bad: string[] = [];
  for (const p of layout) {
    const e = relErr(ours.subarray(p.offset, p.offset + p.size), ref.subarray(p.offset, p.offset + p.size));
    if (!(e <= tol)) bad.push(`${p.name}: relative error ${e.toExponential(2)} > ${tol}`);
  }
  return bad;
}

export function relScalar(ours: number, ref: number): number {
  return Math.abs(ours - ref) / Math.max(Math.abs(ref), 1e-30);
}
