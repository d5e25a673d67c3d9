/**
 * The end-of-run summary: per phase the steps run, best val loss and its step, tokens seen and
 * mean throughput; then the run's wall time and the files written.
 *
 * The loop fills the input from what it already has: the checkpoint state (best_val_loss, step
 * of best.pt), `TrainStats.session()` (src/train/stats.ts: this session's tokens and training time) and
 * `MetricsLog.wallTimeS()` (wall time across resumes). Example:
 *
 *   console.log(formatSummary({
 *     phases: [{ phase: "pretrain", startStep, endStep: step, totalSteps, bestValLoss, bestStep,
 *                lastValLoss: stats.lastValLoss, tokensPerStep: B * T, session: stats.session() }],
 *     wallTimeS: metrics.wallTimeS(),
 *     files: [{ label: "best checkpoint", path: "checkpoints/best.pt" }, ...],
 *   }));
 *
 * Output (plain text, no colour, one trailing newline):
 *
 *   run summary
 *     pretrain  steps 0 -> 20000 of 20000 (resumed at 12000)
 *               best val_loss 3.2145 at step 18000 (last 3.2201)
 *               tokens seen 163,840,000 (20000 steps x 8,192)
 *               target tokens 61,440,000 (37.5 % of tokens seen: the ones the loss counts)   (SFT)
 *               throughput 12,345 tok/s (mean over this session's 8000 steps, evals and saves excluded)
 *     wall time 3h12m (whole run, time stopped between resumes not counted)
 *     files
 *       best checkpoint  checkpoints/best.pt
 */

import { fmtDuration } from "./progress.ts";
import type { SessionStats } from "./stats.ts";

export interface PhaseSummary {
  phase: string;
  /** Completed steps when this session started (0 on a fresh start). */
  startStep: number;
  /** Completed steps at the end. */
  endStep: number;
  totalSteps: number;
  /** best_val_loss of the phase (what best.pt holds), null if no eval ran. */
  bestValLoss: number | null;
  /** Step of that eval / of best.pt. */
  bestStep: number | null;
  lastValLoss: number | null;
  /** Tokens per optimizer step (B*T); tokens seen = endStep x this. */
  tokensPerStep: number;
  /** Targets the loss counted over the phase's endStep steps (TrainStats.phaseTargets); omitted: all. */
  targetTokens?: number;
  /** This session's figures, from TrainStats.session(). */
  session: SessionStats;
}

export interface SummaryFile {
  label: string;
  path: string;
}

export interface RunSummary {
  phases: PhaseSummary[];
  /** Seconds since the run's first start, across resumes (MetricsLog.wallTimeS()). */
  wallTimeS: number;
  files: SummaryFile[];
  /** Set when the run stopped early (e.g. "interrupted"); printed on the first line. */
  stopped?: string;
}

const int = (n: number): string => Math.round(n).toLocaleString("en-US");

function loss(v: number | null): string {
  return v === null ? "-" : Number.isFinite(v) ? v.toFixed(4) : String(v);
}

export function formatSummary(s: RunSummary): string {
  const lines: string[] = [s.stopped ? `run summary (${s.stopped})` : "run summary"];
  const nameW = Math.max(8, ...s.phases.map((p) => p.phase.length));
  const ind = " ".repeat(2 + nameW + 2);
  for (const p of s.phases) {
    const resumed = p.startStep > 0 ? ` (resumed at ${p.startStep})` : "";
    lines.push(`  ${p.phase.padEnd(nameW)}  steps ${p.startStep} -> ${p.endStep} of ${p.totalSteps}${resumed}`);
    if (p.bestValLoss === null) {
      lines.push(`${ind}no eval ran${p.lastValLoss !== null ? ` (last val_loss ${loss(p.lastValLoss)})` : ""}`);
    } else {
      const at = p.bestStep === null ? "" : ` at step ${p.bestStep}`;
      const last = p.lastValLoss !== null ? ` (last ${loss(p.lastValLoss)})` : "";
      lines.push(`${ind}best val_loss ${loss(p.bestValLoss)}${at}${last}`);
    }
    const seen = p.endStep * p.tokensPerStep;
    lines.push(`${ind}tokens seen ${int(seen)} (${p.endStep} steps x ${int(p.tokensPerStep)})`);
    if (p.targetTokens !== undefined && p.targetTokens !== seen) {
      const share = seen > 0 ? ((100 * p.targetTokens) / seen).toFixed(1) : "0.0";
      lines.push(`${ind}target tokens ${int(p.targetTokens)} (${share} % of tokens seen: the ones the loss counts)`);
    }
    const ss = p.session;
    if (ss.steps > 0 && ss.trainSeconds > 0) {
      lines.push(
        `${ind}throughput ${int(ss.tokens / ss.trainSeconds)} tok/s (mean over this session's ${ss.steps} steps, evals and saves excluded)`,
      );
    } else {
      lines.push(`${ind}throughput - (no step ran in this session)`);
    }
  }
  lines.push(`  wall time ${fmtDuration(s.wallTimeS)} (whole run, time stopped between resumes not counted)`);
  if (s.files.length) {
    lines.push("  files");
    const w = Math.max(...s.files.map((f) => f.label.length));
    for (const f of s.files) lines.push(`    ${f.label.padEnd(w)}  ${f.path}`);
  }
  return lines.join("\n") + "\n";
}
