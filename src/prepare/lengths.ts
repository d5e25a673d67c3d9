/**
 * prepare-data's length table of SFT examples: a histogram of their lengths in tokens with
 * bins at the model T values asked for (an example fits a model of context T when it has at
 * most T+1 tokens), then per T what a run would make of them under a long-example rule: the
 * same counts a training run prints at its start (src/data/sft-report.ts).
 */
import { classifyExample, emptyStats, type LongExampleRule } from "../data/long-examples.ts";
import { describeStats } from "../data/sft-report.ts";
import { ASST_ID, EOT_ID } from "../data/tokenizer.ts";

/** The T values of the table when none are given. */
export const DEFAULT_TABLE_T: readonly number[] = [64, 128, 256, 512, 1024, 2048];

function quantile(sorted: Uint32Array, q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

export function lengthTable(examples: readonly ArrayLike<number>[], Ts: readonly number[], rule: LongExampleRule): string[] {
  const n = examples.length;
  if (n === 0) return [];
  const lengths = Uint32Array.from(examples, (e) => e.length).sort();
  const ts = [...new Set(Ts)].sort((a, b) => a - b);
  const lines = [`example lengths in tokens (${n} examples, train and val): min ${lengths[0]}, median ${quantile(lengths, 0.5)}, p90 ${quantile(lengths, 0.9)}, max ${lengths[n - 1]}`];
  const bins: { label: string; count: number }[] = [];
  let lo = 1;
  for (const T of ts) {
    const hi = T + 1;
    bins.push({ label: lo === 1 ? `<= ${hi}` : `${lo}..${hi}`, count: lengths.filter((l) => l >= lo && l <= hi).length });
    lo = hi + 1;
  }
  bins.push({ label: `> ${lo - 1}`, count: lengths.filter((l) => l >= lo).length });
  const labelW = Math.max(...bins.map((b) => b.label.length));
  const countW = String(n).length;
  for (const b of bins) {
    const share = (100 * b.count) / n;
    lines.push(`  ${b.label.padEnd(labelW)}  ${String(b.count).padStart(countW)}  ${share.toFixed(1).padStart(5)} %  ${"#".repeat(Math.round(share / 2))}`);
  }
  lines.push(`at model T (long_examples "${rule}"):`);
  for (const T of ts) {
    const stats = emptyStats();
    for (const e of examples) classifyExample(stats, e, 0, e.length, T, { asstId: ASST_ID, eotId: EOT_ID }, rule);
    lines.push(`  T=${T}: ${describeStats(stats, T)}`);
  }
  return lines;
}

/** Parses "--context-lengths 128,1024": positive integers. */
export function parseTs(text: string): number[] | string {
  const parts = text.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
  const ts = parts.map(Number);
  if (ts.length === 0 || ts.some((t) => !Number.isSafeInteger(t) || t < 1)) return `--context-lengths ${text}: expected comma-separated integers >= 1 (model T values), e.g. 128,1024`;
  return ts;
}
