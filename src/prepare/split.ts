/** Deterministic train/val assignment of documents, examples or conversation trees. */
import { DataError } from "../data/errors.ts";
import { mix32 } from "../util/random.ts";

/** How items are split: both splits by a fraction, or all of them into one split. */
export interface SplitPlan {
  mode: "auto" | "train" | "val";
  /** Fraction of items in val (mode auto), in (0, 1). */
  valFraction: number;
  /** Seed of the assignment. */
  seed: number;
}

/** A 32-bit FNV-1a hash of a string (stable keys for items such as tree ids). */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/**
 * Flags (1 = val) for n items. Mode auto: exactly clamp(round(f*n), 1, n-1) items go to
 * val, those with the smallest mix(seed, key), so the choice is spread over the input
 * and does not depend on its order when keys are content-based. keys[i] defaults to i.
 */
export function assignVal(n: number, plan: SplitPlan, keys?: ArrayLike<number>, what = "items"): Uint8Array {
  const flags = new Uint8Array(n);
  if (plan.mode === "val") return flags.fill(1);
  if (plan.mode === "train") return flags;
  if (!(plan.valFraction > 0 && plan.valFraction < 1)) {
    throw new DataError(`val fraction ${plan.valFraction} must be in (0, 1) to split into train and val`);
  }
  if (n < 2) {
    throw new DataError(`${n} ${what}: at least 2 are needed to split into train and val; give more input, or write one split with --split train|val`);
  }
  const nVal = Math.min(n - 1, Math.max(1, Math.round(plan.valFraction * n)));
  const seedMix = mix32((plan.seed >>> 0) ^ 0x5bd1e995);
  const score = new Float64Array(n);
  for (let i = 0; i < n; i++) score[i] = mix32(((keys ? keys[i] : i) >>> 0) ^ seedMix) * 4294967296 + i;
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => score[a] - score[b]);
  for (let k = 0; k < nVal; k++) flags[order[k]] = 1;
  return flags;
}
