import { describe, expect, test } from "bun:test";
import { firstLearnableAsst, IGNORE_INDEX, maskRow, sftMask } from "../src/data/mask.ts";
import { Rng } from "../src/util/random.ts";

const A = 258; // <|asst|>
const E = 259; // <|eot|>
const U = 257; // <|user|>
const P = 256; // <|pad|>

/** The rule as written in DESIGN.md, computed naively: for target j, scan back from token j. */
function reference(row: number[], len: number, T: number): number[] {
  const out: number[] = [];
  for (let j = 0; j < T; j++) {
    let last = -1;
    for (let k = j; k >= 0; k--) {
      if (row[k] === A || row[k] === E) {
        last = row[k];
        break;
      }
    }
    out.push(last === A && j + 1 < len ? row[j + 1] : IGNORE_INDEX);
  }
  return out;
}

function mask(row: number[], len = row.length): number[] {
  const T = row.length - 1;
  const out = new Int32Array(T);
  maskRow(row, 0, len, T, A, E, out, 0);
  return Array.from(out);
}

const I = IGNORE_INDEX;

describe("SFT masking rule", () => {
  test("one turn: counted from the token after <|asst|> up to and including <|eot|>", () => {
    // tokens:   U  h  i  A  o  k  E   (targets are tokens 1..6)
    const row = [U, 104, 105, A, 111, 107, E];
    expect(mask(row)).toEqual([I, I, I, 111, 107, E]);
    expect(mask(row)).toEqual(reference(row, row.length, 6));
  });

  test("<|asst|> first and <|eot|> last in the row", () => {
    const row = [A, 1, 2, E];
    expect(mask(row)).toEqual([1, 2, E]);
  });

  test("<|asst|> as the last token of the row counts nothing (it is only a target)", () => {
    expect(mask([U, 1, 2, A])).toEqual([I, I, I]);
  });

  test("<|eot|> at position 0 and tokens before any <|asst|> are ignored", () => {
    expect(mask([E, 1, 2, 3])).toEqual([I, I, I]);
  });

  test("truncation inside the answer: every answer token of the row counts, no <|eot|> needed", () => {
    const row = [U, 5, A, 6, 7, 8]; // example continues beyond the row
    expect(mask(row)).toEqual([I, I, 6, 7, 8]);
  });

  test("several turns: each assistant turn counts, user turns between them do not", () => {
    const row = [U, 1, A, 2, E, U, 3, A, 4, 5, E];
    expect(mask(row)).toEqual([I, I, 2, E, I, I, I, 4, 5, E]);
    expect(mask(row)).toEqual(reference(row, row.length, 10));
  });

  test("padding is ignored after <|eot|>, and past the example end even inside a turn", () => {
    const row = [U, 1, A, 2, E, P, P, P];
    expect(mask(row, 5)).toEqual([I, I, 2, E, I, I, I]);
    const open = [U, 1, A, 2, 3, P, P]; // malformed: no <|eot|>, then padding
    expect(mask(open, 5)).toEqual([I, I, 2, 3, I, I]);
  });

  test("matches the naive reference on random rows", () => {
    const rng = new Rng(7, 0, 1);
    const alphabet = [A, E, U, 1, 2, 3, 4];
    for (let trial = 0; trial < 500; trial++) {
      const T = 1 + rng.below(20);
      const row = Array.from({ length: T + 1 }, () => alphabet[rng.below(alphabet.length)]);
      const len = 1 + rng.below(T + 1);
      expect(mask(row, len)).toEqual(reference(row, len, T));
    }
  });

  test("sftMask on (x, y) agrees with maskRow, padding targets ignored", () => {
    const T = 8;
    const rows = [
      { toks: [U, 1, A, 2, 3, E, P, P, P], len: 6 },
      { toks: [A, 9, E, U, 4, A, 5, 6, 7], len: 9 },
    ];
    const x = new Int32Array(2 * T);
    const y = new Int32Array(2 * T);
    const expected = new Int32Array(2 * T);
    rows.forEach((r, b) => {
      x.set(r.toks.slice(0, T), b * T);
      y.set(r.toks.slice(1), b * T);
      maskRow(r.toks, 0, r.len, T, A, E, expected, b * T);
    });
    expect(Array.from(sftMask(x, y, T, { asstId: A, eotId: E, padId: P }))).toEqual(Array.from(expected));
    expect(() => sftMask(x, y.subarray(1), T, { asstId: A, eotId: E })).toThrow(/rows of T=8/);
  });

  test("maskRow returns the number of counted targets", () => {
    const out = new Int32Array(6);
    expect(maskRow([U, 1, A, 2, 3, E, P], 0, 6, 6, A, E, out, 0)).toBe(3);
  });

  test("firstLearnableAsst: an <|asst|> must have a following token inside T+1", () => {
    const T = 4;
    expect(firstLearnableAsst([U, 1, 2, A, 5], 0, 5, T, A)).toBe(3); // p=3: target at 4 <= T
    expect(firstLearnableAsst([U, 1, 2, 3, A, 5], 0, 6, T, A)).toBe(-1); // p=4=T: cut off
    expect(firstLearnableAsst([U, 1, A], 0, 3, T, A)).toBe(-1); // nothing after <|asst|>
    expect(firstLearnableAsst([9, 9, U, A, 1], 2, 3, T, A)).toBe(1); // offset start
  });
});
