/**
 * Console progress of one training phase: it prints, it computes nothing. The numbers come
 * from the loop's statistics (src/train/stats.ts: TrainStats).
 *
 * Two kinds of output, both through one printer so they never garble each other:
 *  - plain lines (the spec's progress line every `log_every` steps, eval results, checkpoint
 *    notices, anything passed to `print`), always printed, on a terminal or not;
 *  - one live line (step/total, bar, percent, ETA, tokens/s, moving-average loss, lr, last val
 *    loss) redrawn in place with "\r" + clear-to-end-of-line, at most every `redrawMs`, and only
 *    when the stream is a terminal (`isTTY` and TERM is not "dumb"). Before a plain line the live
 *    line is cleared, after it the live line is drawn again. Not on a terminal (CI, file, pipe),
 *    nothing live is written.
 *
 * How the loop uses it (src/train/loop.ts):
 *   const logged = stats.step({ step, loss, lr, tokens });   printer.step(logged);
 *   printer.activity("eval"); ...; stats.evaluated(valLoss);  printer.eval({ step, valLoss, best, improved });
 *   printer.activity("saving"); ...;                           printer.checkpoint({ step, paths }); stats.paused();
 *   finally printer.finish();
 */
import type { LoggedStep, TrainStats } from "./stats.ts";

/** The part of a Node/Bun write stream the printer needs (process.stdout fits). */
export interface ProgressStream {
  write(chunk: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface ProgressOptions {
  /** Label printed in front of every line, e.g. "pretrain" or "sft". */
  phase: string;
  /** The numbers shown: the loop's statistics (their clock is the printer's). */
  stats: TrainStats;
  /** Minimum milliseconds between two redraws of the live line. Default 200. */
  redrawMs?: number;
  /** Output stream. Default process.stdout. */
  out?: ProgressStream;
  /** Environment used to read TERM. Default process.env. */
  env?: Record<string, string | undefined>;
  /** Force the live line on or off instead of detecting a terminal. */
  live?: boolean;
}

export interface EvalInfo {
  step: number;
  valLoss: number;
  /** Best val loss of the phase after this eval. */
  best: number;
  /** True when this eval improved the best (best.pt will hold it). */
  improved: boolean;
  /** Duration of the eval, shown when given. */
  seconds?: number;
}

export interface CheckpointInfo {
  step: number;
  /** Files written, as they should be shown (e.g. relative to the working directory). */
  paths: string[];
}

const CLEAR_LINE = "\r\x1b[K";

export class ProgressPrinter {
  readonly phase: string;
  readonly live: boolean;
  private readonly stats: TrainStats;
  private readonly redrawMs: number;
  private readonly out: ProgressStream;
  private lastDraw = -Infinity;
  private drawn = false;
  private finished = false;
  private act: string | null = null;

  constructor(o: ProgressOptions) {
    this.phase = o.phase;
    this.stats = o.stats;
    this.redrawMs = o.redrawMs ?? 200;
    this.out = o.out ?? process.stdout;
    const env = o.env ?? process.env;
    this.live = o.live ?? (this.out.isTTY === true && env.TERM !== "dumb");
  }

  /** Shows a recorded step: its log line when it was logged, else (throttled) the live line. */
  step(logged: LoggedStep | null): void {
    const t = this.stats.now();
    this.act = null;
    if (logged !== null) this.print(this.formatLog(logged, t));
    else if (this.live && t - this.lastDraw >= this.redrawMs) this.draw(t);
  }

  /** Reports a finished eval (after stats.evaluated): one line; the live line shows its val loss. */
  eval(e: EvalInfo): void {
    this.act = null;
    const parts = [
      `${this.tag()} eval step ${this.stepStr(e.step)}`,
      `val_loss ${fmtLoss(e.valLoss)}`,
      e.improved ? `best ${fmtLoss(e.best)} (new best)` : `best ${fmtLoss(e.best)}`,
    ];
    if (e.seconds !== undefined) parts.push(`${fmtSeconds(e.seconds)}`);
    this.print(parts.join(" | "));
  }

  /** Report written checkpoint files. */
  checkpoint(c: CheckpointInfo): void {
    this.act = null;
    this.print(`${this.tag()} checkpoint step ${this.stepStr(c.step)} -> ${c.paths.join(", ")}`);
  }

  /** Show what the loop is busy with (e.g. "eval", "saving") on the live line until the next report. */
  activity(label: string | null): void {
    this.act = label;
    if (this.live) this.draw(this.stats.now());
  }

  /** Print any line without garbling the live line. */
  print(line: string): void {
    if (this.finished) {
      this.out.write(line + "\n");
      return;
    }
    if (this.live) {
      // One write: clear the live line, the plain line, the live line again.
      const t = this.stats.now();
      this.out.write((this.drawn ? CLEAR_LINE : "") + line + "\n" + this.liveText());
      this.drawn = true;
      this.lastDraw = t;
    } else {
      this.out.write(line + "\n");
    }
  }

  /** Clear the live line. Later `print` calls still work (plain lines). Call it in a finally. */
  finish(): void {
    if (this.finished) return;
    this.finished = true;
    if (this.live && this.drawn) this.out.write(CLEAR_LINE);
    this.drawn = false;
  }

  private tag(): string {
    return `[${this.phase}]`;
  }

  private stepStr(step: number): string {
    const total = this.stats.totalSteps;
    return `${String(step).padStart(String(total).length)}/${total}`;
  }

  private formatLog({ log: l, nonFiniteLosses: nonFinite }: LoggedStep, t: number): string {
    const parts = [
      `${this.tag()} step ${this.stepStr(l.step)}`,
      `lr ${fmtLr(l.lr)}`,
      `train_loss ${fmtLoss(l.train_loss)}`,
    ];
    if (nonFinite > 0) parts.push(`non-finite losses ${nonFinite}`);
    if (l.last_val_loss !== null) parts.push(`last_val_loss ${fmtLoss(l.last_val_loss)}`);
    parts.push(`tokens/s ${Math.round(l.tokens_per_s)}`);
    parts.push(fmtTokens(this.stats.phaseTokens, l.target_tokens));
    parts.push(`elapsed ${fmtDuration(this.stats.elapsedSeconds(t))}`);
    const eta = this.stats.etaSeconds(t);
    if (eta !== null && l.step < this.stats.totalSteps) parts.push(`eta ${fmtDuration(eta)}`);
    return parts.join(" | ");
  }

  /**
   * The live line, fitted to the terminal width (a wrapped line could not be redrawn). Fields
   * are padded to fixed widths so the line, and the bar width derived from it, do not jitter.
   */
  private liveText(): string {
    const st = this.stats;
    const t = st.now();
    const width = Math.max(20, (this.out.columns ?? 80) - 1);
    const total = st.totalSteps;
    const frac = total > 0 ? Math.min(1, st.currentStep / total) : 1;
    const eta = st.etaSeconds(t);
    const some = st.windowSteps > 0;
    const lastVal = st.lastValLoss;
    const tag = this.tag();
    const counter = `${String(st.currentStep).padStart(String(total).length)}/${total} ${(frac * 100).toFixed(1).padStart(5)}%`;
    // In order of importance: the last ones go first when the terminal is narrow.
    const segs = [
      `eta ${(eta === null ? "-" : fmtDuration(eta)).padEnd(6)}`,
      `${(some ? fmtRate(st.windowTokensPerSecond) : "-").padStart(6)} tok/s`,
      `loss ${some ? fmtLoss(st.movingAverageLoss).padStart(7) : "-".padEnd(7)}`,
      `lr ${(some ? fmtLr(st.lr) : "-").padEnd(7)}`,
      `val ${lastVal !== null ? fmtLoss(lastVal).padStart(7) : "-".padEnd(7)}`,
    ];
    const text = (parts: string[]): string => [`${tag} ${counter}`, ...parts].join(" | ");
    // The bar takes what the full text leaves (up to 30 columns), or is left out.
    const barW = Math.min(30, width - text(segs).length - 1);
    let bar = "";
    if (barW >= 10) {
      const inner = barW - 2;
      const filled = Math.round(frac * inner);
      bar = "[" + "#".repeat(filled) + "-".repeat(inner - filled) + "] ";
    }
    if (this.act !== null) segs.unshift(`${this.act}...`);
    while (segs.length > 0 && bar.length + text(segs).length > width) segs.pop();
    const line = bar ? text(segs).replace(`${tag} `, `${tag} ${bar}`) : text(segs);
    return line.length > width ? line.slice(0, width) : line;
  }

  private draw(t: number): void {
    if (this.finished) return;
    this.out.write((this.drawn ? CLEAR_LINE : "\r") + this.liveText());
    this.drawn = true;
    this.lastDraw = t;
  }
}

/** Loss with 4 decimals; "nan"/"inf" spelled out. */
export function fmtLoss(v: number): string {
  if (Number.isNaN(v)) return "nan";
  if (!Number.isFinite(v)) return v > 0 ? "inf" : "-inf";
  return v.toFixed(4);
}

/** Learning rate in short scientific notation, e.g. 3.00e-4. */
export function fmtLr(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  return v.toExponential(2);
}

/** 12345 -> "12.3k", 1234567 -> "1.23M". */
export function fmtRate(v: number): string {
  if (!Number.isFinite(v)) return "-";
  if (v >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (v >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (v >= 1e3) return (v / 1e3).toFixed(2) + "k";
  return v.toFixed(0);
}

/**
 * Tokens seen and, when fewer, the targets the loss counted: "tokens 1.28M" or
 * "tokens 1.28M (targets 481k, 37.6 %)".
 */
export function fmtTokens(tokens: number, targets: number): string {
  if (targets === tokens) return `tokens ${fmtCount(tokens)}`;
  const share = tokens > 0 ? ((100 * targets) / tokens).toFixed(1) : "0.0";
  return `tokens ${fmtCount(tokens)} (targets ${fmtCount(targets)}, ${share} %)`;
}

/** 950 -> "950", 12345 -> "12.3k", 1234567 -> "1.23M", 2.5e9 -> "2.50G". */
export function fmtCount(v: number): string {
  if (v >= 1e9) return (v / 1e9).toFixed(2) + "G";
  if (v >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (v >= 1e3) return (v / 1e3).toFixed(1) + "k";
  return String(Math.round(v));
}

/** Seconds with one decimal below a minute, else as a duration. */
export function fmtSeconds(s: number): string {
  return s < 60 ? `${s.toFixed(1)}s` : fmtDuration(s);
}

/** 42 -> "42s", 185 -> "3m05s", 3725 -> "1h02m", 90000 -> "1d01h". */
export function fmtDuration(sec: number): string {
  if (!Number.isFinite(sec) || sec < 0) return "-";
  const s = Math.round(sec);
  if (s < 60) return `${s}s`;
  const pad = (n: number) => String(n).padStart(2, "0");
  if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${pad(Math.floor((s % 3600) / 60))}m`;
  return `${Math.floor(s / 86400)}d${pad(Math.floor((s % 86400) / 3600))}h`;
}
