/**
 * What an SFT row holds of an example longer than T+1 tokens, defined once (the sampler,
 * the start-of-run report and prepare-data's length table all use it; interop/torch_data.py
 * ports it). The config key `long_examples` of an sft config chooses the rule:
 *
 *   "head"        (default) the first T+1 tokens; the rest is cut. An example whose first
 *                 <|asst|> is not followed by a token within them has nothing to learn.
 *   "cut_prompt"  the prompt is cut from its start so the answer is seen: the row starts at
 *                 max(0, min(p - floor(T/2), n - (T+1))), p = the first <|asst|>, n = the
 *                 example's length. The prompt keeps at least its last floor(T/2) tokens
 *                 (all of them when shorter), the answer takes the rest of the row; an answer
 *                 shorter than that leaves its room to the prompt (the row then ends with the
 *                 example). Short prompts are not cut at all (the row is the head).
 *   "drop"        examples longer than T+1 are skipped; the others are taken whole.
 *
 * The row always starts at or before the first <|asst|>, so it starts outside an assistant
 * turn and the masking rule (mask.ts) reads the same state inside the row as in the whole
 * example: a row's counted targets are the example's response targets inside the row.
 */
import { firstLearnableAsst } from "./mask.ts";

export const LONG_EXAMPLE_RULES = ["head", "cut_prompt", "drop"] as const;
export type LongExampleRule = (typeof LONG_EXAMPLE_RULES)[number];
export const DEFAULT_LONG_EXAMPLES: LongExampleRule = "head";

/** Why an example is not drawn. */
export type SkipReason = "no_target" | "too_long";

/**
 * Where the row of an example (n tokens from `start`) begins, as an offset into the example,
 * or the reason it is skipped (nothing to learn in its row, or too long for "drop").
 */
export function rowOffset(tokens: ArrayLike<number>, start: number, n: number, T: number, asstId: number, rule: LongExampleRule): number | SkipReason {
  if (n <= T + 1 || rule === "head") return firstLearnableAsst(tokens, start, n, T, asstId) >= 0 ? 0 : "no_target";
  if (rule === "drop") return "too_long";
  const p = firstLearnableAsst(tokens, start, n, n, asstId); // anywhere in the example
  if (p < 0) return "no_target";
  return Math.max(0, Math.min(p - Math.floor(T / 2), n - (T + 1)));
}

/**
 * Response targets of an example (n tokens from `start`): the targets the masking rule
 * counts when the whole example is seen, and those inside a row of T+1 tokens beginning at
 * `offset` (which must start outside an assistant turn, as rowOffset's rows do).
 */
export function responseTargets(tokens: ArrayLike<number>, start: number, n: number, offset: number, T: number, asstId: number, eotId: number): { all: number; inRow: number } {
  const rowEnd = offset + Math.min(n - offset, T + 1) - 1; // targets j with offset <= j < rowEnd
  let inAsst = false;
  let all = 0;
  let inRow = 0;
  for (let j = 0; j + 1 < n; j++) {
    const t = tokens[start + j];
    if (t === asstId) inAsst = true;
    else if (t === eotId) inAsst = false;
    if (!inAsst) continue;
    all++;
    if (j >= offset && j < rowEnd) inRow++;
  }
  return { all, inRow };
}

/** What a rule makes of the examples of one cache at one T. */
export interface ExampleStats {
  examples: number;
  /** Drawn, and whole (n <= T+1). */
  whole: number;
  /** Drawn, but longer than T+1: the row holds part of the example. */
  cut: number;
  /** Not drawn: nothing to learn in the row. */
  noTarget: number;
  /** Not drawn: longer than T+1 under "drop". */
  tooLong: number;
  /** Response targets of all examples (each seen whole). */
  responseTargets: number;
  /** Of those, the ones counted in the rows of the drawn examples. */
  countedTargets: number;
}

export function emptyStats(): ExampleStats {
  return { examples: 0, whole: 0, cut: 0, noTarget: 0, tooLong: 0, responseTargets: 0, countedTargets: 0 };
}

export function skippedOf(s: ExampleStats): number {
  return s.noTarget + s.tooLong;
}

/** Share of the response targets the loss sees (1 when there are none). */
export function countedShare(s: ExampleStats): number {
  return s.responseTargets > 0 ? s.countedTargets / s.responseTargets : 1;
}

/**
 * Adds one example to `stats`; returns its row offset and counted targets, or null when it
 * is skipped.
 */
export function classifyExample(
  stats: ExampleStats,
  tokens: ArrayLike<number>,
  start: number,
  n: number,
  T: number,
  ids: { asstId: number; eotId: number },
  rule: LongExampleRule,
): { offset: number; counted: number } | null {
  stats.examples++;
  const offset = rowOffset(tokens, start, n, T, ids.asstId, rule);
  const targets = responseTargets(tokens, start, n, typeof offset === "number" ? offset : 0, T, ids.asstId, ids.eotId);
  stats.responseTargets += targets.all;
  if (offset === "no_target") stats.noTarget++;
  else if (offset === "too_long") stats.tooLong++;
  else {
    if (n <= T + 1) stats.whole++;
    else stats.cut++;
    stats.countedTargets += targets.inRow;
    return { offset, counted: targets.inRow };
  }
  return null;
}
