/**
 * The SFT masking rule, defined once.
 *
 * A row holds T+1 tokens t[0..T]; inputs x[j] = t[j], targets y[j] = t[j+1].
 * Target position j counts iff the most recent of {<|asst|>, <|eot|>} among t[0..j]
 * (strictly before the target token t[j+1]) is <|asst|>. So an assistant turn
 * `<|asst|> a b c <|eot|>` makes a, b, c and <|eot|> counted targets: from the token
 * after <|asst|> up to and including <|eot|>. A row starts outside any assistant turn.
 * Everything else is IGNORE_INDEX: the prompt, the <|asst|> token itself, what follows
 * <|eot|>, and padding (positions past the example's end, or a target equal to the pad id).
 */

/** The ignore index of the cross-entropy (PyTorch's default). */
export const IGNORE_INDEX = -100;

export interface MaskIds {
  asstId: number;
  eotId: number;
  /** Targets equal to this id are never counted (sftMask). */
  padId?: number;
}

/**
 * y_masked of one row: `row` holds T+1 tokens from `start`, of which the first `len`
 * are real (the rest is padding). Writes T values to out[outOffset..] and returns the
 * number of counted targets.
 */
export function maskRow(
  row: ArrayLike<number>,
  start: number,
  len: number,
  T: number,
  asstId: number,
  eotId: number,
  out: Int32Array,
  outOffset: number,
): number {
  let inAsst = false;
  let counted = 0;
  for (let j = 0; j < T; j++) {
    const t = row[start + j];
    if (t === asstId) inAsst = true;
    else if (t === eotId) inAsst = false;
    if (inAsst && j + 1 < len) {
      out[outOffset + j] = row[start + j + 1];
      counted++;
    } else {
      out[outOffset + j] = IGNORE_INDEX;
    }
  }
  return counted;
}

/**
 * y_masked of a batch given as (x, y), B rows of T each: the same rule, with the state
 * read from x and targets equal to `padId` (when given) ignored. Returns a new array
 * unless `out` is passed.
 */
export function sftMask(x: Int32Array, y: Int32Array, T: number, ids: MaskIds, out?: Int32Array): Int32Array {
  if (x.length !== y.length || T < 1 || x.length % T !== 0) {
    throw new RangeError(`sftMask: x (${x.length}) and y (${y.length}) must both hold B rows of T=${T}`);
  }
  const res = out ?? new Int32Array(y.length);
  for (let r = 0; r < x.length; r += T) {
    let inAsst = false;
    for (let j = 0; j < T; j++) {
      const t = x[r + j];
      if (t === ids.asstId) inAsst = true;
      else if (t === ids.eotId) inAsst = false;
      const target = y[r + j];
      res[r + j] = inAsst && target !== ids.padId ? target : IGNORE_INDEX;
    }
  }
  return res;
}

/**
 * Whether an example of n tokens (from `start`), cut to its first T+1, has a counted
 * target: iff its first <|asst|> sits at a position p with p + 1 < min(n, T+1) (then
 * target p, the token after it, counts). Returns p, or -1 when nothing would be learned.
 */
export function firstLearnableAsst(tokens: ArrayLike<number>, start: number, n: number, T: number, asstId: number): number {
  const L = Math.min(n, T + 1);
  for (let p = 0; p + 1 < L; p++) if (tokens[start + p] === asstId) return p;
  return -1;
}
