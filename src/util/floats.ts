/**
 * Scans of float32 values at memory speed (checkpoints of 1.5 GB are checked as they
 * stream): one branch-free pass over the bit patterns, and the exact search only when
 * that pass saw something.
 */

/**
 * The index of the first value that is NaN or infinite (or, with nonNegative, below 0),
 * or -1 when there is none.
 */
export function firstBadFloat(values: Float32Array, nonNegative = false): number {
  const bits = new Int32Array(values.buffer, values.byteOffset, values.length);
  let exponents = 0;
  let signs = 0;
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i]!;
    exponents |= ((b >> 23) & 0xff) + 1; // 256 only for exponent 255: infinity, NaN
    signs |= b;
  }
  if ((exponents & 256) === 0 && (!nonNegative || signs >= 0)) return -1;
  // -0 sets the sign bit and is >= 0: the exact test decides
  return values.findIndex((x) => !(Number.isFinite(x) && (!nonNegative || x >= 0)));
}
