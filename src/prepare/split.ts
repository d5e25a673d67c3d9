/**
 * Train/val assignment by a hash of the content, and exact-duplicate removal.
 *
 * The side of an item depends on its split key and the seed only, never on its position or
 * on the other items: a record lands on the same side in every run, in any input order,
 * and when more data is added. The hash (documented in docs/cache-format.md):
 *
 *   h = the first 8 bytes of SHA-256( "train-split-v1:" + seed + ":" + key ), big-endian
 *   val  iff  h < floor(val_fraction * 2^64)
 *
 * e.g. in Python: int.from_bytes(hashlib.sha256(b"train-split-v1:0:" + key).digest()[:8], "big")
 * < int(0.05 * 2**64). About val_fraction of the items go to val (a binomial count, not an
 * exact one). Tiny inputs only: when the rule leaves one side empty, the item with the
 * smallest hash goes to val (or the one with the largest to train, with any item sharing its
 * key), and `moved` says so.
 */
import { createHash } from "node:crypto";
import { DataError } from "../data/errors.ts";

/** How items are split: both splits by a fraction, or all of them into one split. */
export interface SplitPlan {
  mode: "auto" | "train" | "val";
  /** Fraction of items in val (mode auto), in (0, 1). */
  valFraction: number;
  /** Seed of the assignment. */
  seed: number;
}

/** A 32-bit FNV-1a hash of a string (stable keys for items such as generator names). */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** The split hash of a key (bytes, or a string as UTF-8) under a seed: a 64-bit integer. */
export function splitHash(key: Uint8Array | Uint16Array | string, seed: number): bigint {
  const h = createHash("sha256").update(`train-split-v1:${seed}:`);
  h.update(typeof key === "string" ? key : new Uint8Array(key.buffer, key.byteOffset, key.byteLength));
  return h.digest().readBigUInt64BE(0);
}

/** An identity of content for duplicate detection: its SHA-256, hex. */
export function contentDigest(bytes: Uint8Array | Uint16Array): string {
  return createHash("sha256").update(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength)).digest("hex");
}

export interface Assignment {
  /** Per item: 1 = val. */
  val: Uint8Array;
  /** Set when a tiny input left one side empty and an item was moved (see top). */
  moved: string | null;
}

/** The side of each item from its split hash (see top). */
export function assignByHash(hashes: readonly bigint[], plan: SplitPlan, what = "items"): Assignment {
  const n = hashes.length;
  const val = new Uint8Array(n);
  if (plan.mode === "val") return { val: val.fill(1), moved: null };
  if (plan.mode === "train") return { val, moved: null };
  if (!(plan.valFraction > 0 && plan.valFraction < 1)) {
    throw new DataError(`val fraction ${plan.valFraction} must be in (0, 1) to split into train and val`);
  }
  if (n < 2) {
    throw new DataError(`${n} ${what}: at least 2 are needed to split into train and val; give more input, or write one split with --split train|val`);
  }
  const threshold = BigInt(Math.floor(plan.valFraction * 2 ** 64));
  let nVal = 0;
  for (let i = 0; i < n; i++) if (hashes[i] < threshold) (val[i] = 1), nVal++;
  if (nVal > 0 && nVal < n) return { val, moved: null };
  // one side is empty: move the item nearest to the threshold
  let k = 0;
  for (let i = 1; i < n; i++) if (nVal === 0 ? hashes[i] < hashes[k] : hashes[i] > hashes[k]) k = i;
  if (hashes.every((h) => h === hashes[k])) {
    throw new DataError(`all ${n} ${what} have the same split key, so they cannot be split into train and val; write one split with --split train|val`);
  }
  let moved = 0; // every item of that key, so items sharing a key stay on one side
  for (let i = 0; i < n; i++) if (hashes[i] === hashes[k]) (val[i] = nVal === 0 ? 1 : 0), moved++;
  const to = nVal === 0 ? "val" : "train";
  return { val, moved: `the hash put all ${n} ${what} into ${nVal === 0 ? "train" : "val"}; moved ${moved} (the ${nVal === 0 ? "smallest" : "largest"} hash) to ${to} (a tiny input: give more, or choose the split with --split)` };
}
