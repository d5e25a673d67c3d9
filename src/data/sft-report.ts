/**
 * The lines an SFT run prints at its start, one per source of the training mixture: how
 * many examples are whole, cut and skipped at this T under the long-example rule, and the
 * share of the response tokens the loss sees; then a warning for each source that skips
 * more than SKIP_WARN_SHARE of its examples, with what to do about it.
 */
import { type ExampleStats, type LongExampleRule, skippedOf } from "./long-examples.ts";

/** A source skipping more than this share of its examples gets a warning. */
export const SKIP_WARN_SHARE = 0.1;

const pct = (part: number, whole: number): string => `${whole > 0 ? ((100 * part) / whole).toFixed(1) : "0.0"} %`;

/** "35 kept whole, 81 cut, 60 skipped (...)" and the counted share of one source. */
export function describeStats(s: ExampleStats, T: number): string {
  const why: string[] = [];
  if (s.noTarget > 0) why.push(`${s.noTarget} with no answer token in their row`);
  if (s.tooLong > 0) why.push(`${s.tooLong} longer than T+1=${T + 1}`);
  const skipped = skippedOf(s);
  return (
    `${s.examples} examples: ${s.whole} kept whole, ${s.cut} cut, ${skipped} skipped${why.length > 0 ? ` (${why.join(", ")})` : ""}; ` +
    `${pct(s.countedTargets, s.responseTargets)} of response tokens counted (${s.countedTargets} of ${s.responseTargets})`
  );
}

/** What to do when a source skips too many examples. */
function advice(s: ExampleStats, rule: LongExampleRule): string {
  if (s.tooLong > s.noTarget) {
    return `they are longer than T+1 and long_examples is "drop": use a model with a larger T, or set "long_examples": "cut_prompt" (or "head") in the sft config`;
  }
  const rules = rule === "head" ? `, or set "long_examples": "cut_prompt" in the sft config (keeps the end of the prompt and the answer)` : "";
  return `their answer starts too late in the row: use a model with a larger T, or shorter prompts (e.g. shorter contexts)${rules}`;
}

/** The start lines of an SFT training mixture: one per source, then the warnings. */
export function sftStartLines(stats: Readonly<Record<string, ExampleStats>>, T: number, rule: LongExampleRule): { lines: string[]; warnings: string[] } {
  const lines: string[] = [];
  const warnings: string[] = [];
  for (const [source, s] of Object.entries(stats)) {
    lines.push(`sft data ${source}_train (T=${T}, long_examples "${rule}"): ${describeStats(s, T)}`);
    const skipped = skippedOf(s);
    if (skipped > SKIP_WARN_SHARE * s.examples) {
      warnings.push(`warning: ${source}_train: ${skipped} of ${s.examples} examples (${pct(skipped, s.examples)}) are skipped at T=${T}; ${advice(s, rule)}`);
    }
  }
  return { lines, warnings };
}
