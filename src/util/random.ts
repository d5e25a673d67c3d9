/**
 * Deterministic random numbers (batch sampling, weight init), in plain uint32 arithmetic (no BigInt).
 * A generator is keyed by (seed, step, stream): the draws of step s are a pure function
 * of (seed, s), independent of what was drawn before, so a resumed run samples exactly
 * the batches an uninterrupted one would.
 *
 * Core: sfc32 (Chris Doty-Humphrey's small fast chaotic generator), its 96-bit key state
 * set from the three words through a bijective 32-bit mixer, so distinct keys start in
 * distinct states.
 */

/** RNG streams: training batches, fixed eval batches and weight init never share draws. */
export const RNG_STREAM = {
  train: 0x7472_6169, // "trai"
  eval: 0x6576_616c, // "eval"
  init: 0x696e_6974, // "init"
} as const;

/** A bijective 32-bit mixer (xorshift-multiply, constants of the "lowbias32" hash). */
export function mix32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x21f0aaad);
  x ^= x >>> 15;
  x = Math.imul(x, 0x735a2d97);
  x ^= x >>> 15;
  return x >>> 0;
}

const TWO_32 = 2 ** 32;

export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d = 1;

  /**
   * seed: any safe integer (its low and high 32 bits are used); step: an integer in
   * [0, 2^32); stream: a 32-bit stream id (RNG_STREAM).
   */
  constructor(seed: number, step = 0, stream = 0) {
    if (!Number.isSafeInteger(seed)) throw new RangeError(`seed ${seed} is not a safe integer`);
    if (!Number.isInteger(step) || step < 0 || step >= TWO_32) throw new RangeError(`step ${step} is not an integer in [0, 2^32)`);
    const lo = seed >>> 0;
    const hi = Math.floor(seed / TWO_32) >>> 0;
    this.a = mix32(lo);
    this.b = mix32(hi ^ mix32(stream ^ 0x9e3779b9));
    this.c = mix32(step ^ 0x85ebca6b);
    for (let i = 0; i < 16; i++) this.nextU32();
  }

  nextU32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  uniform(): number {
    return ((this.nextU32() >>> 5) * 67108864 + (this.nextU32() >>> 6)) / 9007199254740992;
  }

  /** Uniform integer in [0, n) for 1 <= n <= 2^53 (bias below 2^-53 * n). */
  below(n: number): number {
    return Math.floor(this.uniform() * n);
  }

  /** Standard normal (Box-Muller). */
  normal(): number {
    const u1 = 1 - this.uniform(); // in (0, 1]
    return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * this.uniform());
  }

  /** Index i with probability cum[i] - cum[i-1]; cum is increasing and ends at 1. */
  pick(cum: Float64Array): number {
    const u = this.uniform();
    for (let i = 0; i < cum.length - 1; i++) if (u < cum[i]) return i;
    return cum.length - 1;
  }
}

/** Cumulative sums of probabilities, the last set to exactly 1. */
export function cumulative(probs: readonly number[]): Float64Array {
  const cum = new Float64Array(probs.length);
  let s = 0;
  for (let i = 0; i < probs.length; i++) cum[i] = s += probs[i];
  for (let i = 0; i < cum.length; i++) cum[i] /= s;
  cum[cum.length - 1] = 1;
  return cum;
}
