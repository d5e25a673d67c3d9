/**
 * Console progress of one training phase.
 *
 * Two kinds of output, both through one reporter so they never garble each other:
 *  - plain lines (the spec's progress line every `logEvery` steps, eval results, checkpoint
 *    notices, anything passed to `print`), always printed, on a terminal or not;
 *  - one live line (step/total, bar, percent, ETA, tokens/s, moving-average loss, lr, last val
 *    loss) redrawn in place with "\r" + clear-to-end-of-line, at most every `redrawMs`, and only
 *    when the stream is a terminal (`isTTY` and TERM is not "dumb"). Before a plain line the live
 *    line is cleared, after it the live line is drawn again. Not on a terminal (CI, file, pipe),
 *    nothing live is written.
 *
 * Moving average: a WINDOW mean, not an EMA. The train_loss of a log line is the mean loss of
 * the steps reported since the previous log line (50 steps by default), so it does not depend
 * on whether the run was resumed at a checkpoint in between (a resume at a multiple of
 * `logEvery` gives the same numbers as an uninterrupted run); tokens/s of a log line is the
 * tokens of those steps / their training time. The live line shows the mean over the last
 * `logEvery` steps (a sliding window). Non-finite losses are left out of the means and counted
 * in the log line ("non-finite losses N").
 *
 * Step numbering: `step` is the number of COMPLETED optimizer steps (1 after the first one), the
 * same number a checkpoint written after that step carries (step_{step:07d}.pt). Steps must
 * increase; a step the loop does not report (e.g. an update skipped for a non-finite gradient)
 * is allowed, its time then counts toward the next reported step. Better: report every step.
 *
 * Timing: a step's duration is the time since the previous `step()` call, or since the last
 * `eval()` / `checkpoint()` report, or since construction. So time spent evaluating or saving is
 * not counted as training time as long as the loop reports `eval()` / `checkpoint()` right after
 * finishing them. The ETA uses wall time (evals included): remaining steps x wall time per step
 * of this session.
 *
 * How the loop uses it:
 *   const rep = new ProgressReporter({ phase, totalSteps, startStep, lastValLoss, bestValLoss });
 *   try {
 *     for (let s = startStep; s < totalSteps; s++) {
 *       const r = model.trainStep(x, y, h);
 *       const log = rep.step({ step: s + 1, loss: r.loss, lr: h.lr, tokens: B * T });
 *       if (log) metrics.appendTrain(log);
 *       if (evalDue) { rep.activity("eval"); const v = ...; rep.eval({ step: s + 1, valLoss: v,
 *                      best, improved, seconds }); metrics.appendEval(...); }
 *       if (ckptDue) { rep.activity("saving"); save(...); rep.checkpoint({ step: s + 1, paths }); }
 *     }
 *   } finally { rep.finish(); }
 */

/** The part of a Node/Bun write stream the reporter needs (process.stdout fits). */
export interface ProgressStream {
  write(chunk: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

export interface ProgressOptions {
  /** Label printed in front of every line, e.g. "pretrain" or "sft". */
  phase: string;
  /** Last step of the phase (exclusive loop bound = number of steps when done). */
  totalSteps: number;
  /** Completed steps before this session (0 on a fresh start, the checkpoint's step on resume). */
  startStep: number;
  /** Val loss of the last eval before this session, shown until the next eval (resume). */
  lastValLoss?: number | null;
  /** Print a plain progress line every this many steps (and at the last step). Default 50. */
  logEvery?: number;
  /** Minimum milliseconds between two redraws of the live line. Default 200. */
  redrawMs?: number;
  /** Output stream. Default process.stdout. */
  out?: ProgressStream;
  /** Environment used to read TERM. Default process.env. */
  env?: Record<string, string | undefined>;
  /** Force the live line on or off instead of detecting a terminal. */
  live?: boolean;
  /** Monotonic clock in milliseconds. Default performance.now. */
  now?: () => number;
}

/** What a logged step reports; exactly the fields of a metrics "train" record. */
export interface TrainLog {
  step: number;
  lr: number;
  /** Mean loss of the steps in the window (the steps since the previous log line). */
  train_loss: number;
  /** Val loss of the most recent eval, null if none yet. */
  last_val_loss: number | null;
  tokens_per_s: number;
}

export interface StepInfo {
  /** Completed steps after this one (1-based). Must increase from call to call. */
  step: number;
  /** Training loss of this step (nats). */
  loss: number;
  /** Learning rate used for this step. */
  lr: number;
  /** Tokens processed by this step (B*T). */
  tokens: number;
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

export interface SessionStats {
  /** Steps completed in this session. */
  steps: number;
  /** Tokens processed in this session. */
  tokens: number;
  /** Training time of this session (evals and saves excluded), seconds. */
  trainSeconds: number;
  /** Wall time since the reporter was created, seconds. */
  wallSeconds: number;
}

/** Fixed-size ring of recent steps: loss, tokens, seconds. */
class Window {
  private readonly loss: Float64Array;
  private readonly tokens: Float64Array;
  private readonly secs: Float64Array;
  private n = 0;
  private head = 0;

  constructor(readonly size: number) {
    this.loss = new Float64Array(size);
    this.tokens = new Float64Array(size);
    this.secs = new Float64Array(size);
  }

  push(loss: number, tokens: number, secs: number): void {
    this.loss[this.head] = loss;
    this.tokens[this.head] = tokens;
    this.secs[this.head] = secs;
    this.head = (this.head + 1) % this.size;
    if (this.n < this.size) this.n++;
  }

  get count(): number {
    return this.n;
  }

  /** Mean of the finite losses (NaN if none). */
  meanLoss(): number {
    let s = 0;
    let k = 0;
    for (let i = 0; i < this.n; i++) {
      const v = this.loss[i]!;
      if (Number.isFinite(v)) {
        s += v;
        k++;
      }
    }
    return k > 0 ? s / k : NaN;
  }

  tokensPerSecond(): number {
    let t = 0;
    let d = 0;
    for (let i = 0; i < this.n; i++) {
      t += this.tokens[i]!;
      d += this.secs[i]!;
    }
    return d > 0 ? t / d : 0;
  }
}

/** Sums over the steps since the last log line. */
class Interval {
  private lossSum = 0;
  private lossN = 0;
  nonFinite = 0;
  private tokens = 0;
  private secs = 0;

  add(loss: number, tokens: number, secs: number): void {
    if (Number.isFinite(loss)) {
      this.lossSum += loss;
      this.lossN++;
    } else {
      this.nonFinite++;
    }
    this.tokens += tokens;
    this.secs += secs;
  }

  meanLoss(): number {
    return this.lossN > 0 ? this.lossSum / this.lossN : NaN;
  }

  tokensPerSecond(): number {
    return this.secs > 0 ? this.tokens / this.secs : 0;
  }
}

const CLEAR_LINE = "\r\x1b[K";

export class ProgressReporter {
  readonly phase: string;
  readonly totalSteps: number;
  readonly startStep: number;
  readonly logEvery: number;
  readonly live: boolean;
  private readonly redrawMs: number;
  private readonly out: ProgressStream;
  private readonly now: () => number;
  private readonly window: Window;
  private interval = new Interval();
  private readonly t0: number;
  private mark: number;
  private lastDraw = -Infinity;
  private drawn = false;
  private finished = false;
  private curStep: number;
  private curLr = NaN;
  private lastVal: number | null;
  private act: string | null = null;
  private sessTokens = 0;
  private sessTrainSecs = 0;

  constructor(o: ProgressOptions) {
    const int = (v: number, name: string, min: number): number => {
      if (!Number.isInteger(v) || v < min) {
        throw new Error(`progress: ${name} must be an integer >= ${min}, got ${v}`);
      }
      return v;
    };
    this.phase = o.phase;
    this.totalSteps = int(o.totalSteps, "totalSteps", 0);
    this.startStep = int(o.startStep, "startStep", 0);
    this.logEvery = int(o.logEvery ?? 50, "logEvery", 1);
    this.redrawMs = o.redrawMs ?? 200;
    this.out = o.out ?? process.stdout;
    this.now = o.now ?? (() => performance.now());
    const env = o.env ?? process.env;
    this.live = o.live ?? (this.out.isTTY === true && env.TERM !== "dumb");
    this.window = new Window(this.logEvery);
    this.lastVal = o.lastValLoss ?? null;
    this.curStep = this.startStep;
    this.t0 = this.now();
    this.mark = this.t0;
  }

  /**
   * Record one completed step. Returns the logged values when this step printed a progress
   * line (every `logEvery` steps and at the last step), else null.
   */
  step(s: StepInfo): TrainLog | null {
    if (!Number.isInteger(s.step) || s.step <= this.curStep) {
      throw new Error(`progress: step ${s.step} reported after step ${this.curStep}; steps must increase`);
    }
    const t = this.now();
    const dt = Math.max(0, (t - this.mark) / 1000);
    const prev = this.curStep;
    this.mark = t;
    this.curStep = s.step;
    this.curLr = s.lr;
    this.act = null;
    this.window.push(s.loss, s.tokens, dt);
    this.interval.add(s.loss, s.tokens, dt);
    this.sessTokens += s.tokens;
    this.sessTrainSecs += dt;

    // Log when a multiple of logEvery is reached (or passed, if a step went unreported).
    if (Math.floor(s.step / this.logEvery) > Math.floor(prev / this.logEvery) || s.step === this.totalSteps) {
      const iv = this.interval;
      const log: TrainLog = {
        step: s.step,
        lr: s.lr,
        train_loss: iv.meanLoss(),
        last_val_loss: this.lastVal,
        tokens_per_s: iv.tokensPerSecond(),
      };
      this.print(this.formatLog(log, t, iv.nonFinite));
      this.interval = new Interval();
      return log;
    }
    if (this.live && t - this.lastDraw >= this.redrawMs) this.draw(t);
    return null;
  }

  /** Report a finished eval; prints one line and updates the live line's val loss. */
  eval(e: EvalInfo): void {
    this.lastVal = e.valLoss;
    this.act = null;
    const parts = [
      `${this.tag()} eval step ${this.stepStr(e.step)}`,
      `val_loss ${fmtLoss(e.valLoss)}`,
      e.improved ? `best ${fmtLoss(e.best)} (new best)` : `best ${fmtLoss(e.best)}`,
    ];
    if (e.seconds !== undefined) parts.push(`${fmtSeconds(e.seconds)}`);
    this.print(parts.join(" | "));
    this.mark = this.now();
  }

  /** Report written checkpoint files. */
  checkpoint(c: CheckpointInfo): void {
    this.act = null;
    this.print(`${this.tag()} checkpoint step ${this.stepStr(c.step)} -> ${c.paths.join(", ")}`);
    this.mark = this.now();
  }

  /** Show what the loop is busy with (e.g. "eval", "saving") on the live line until the next report. */
  activity(label: string | null): void {
    this.act = label;
    if (this.live) this.draw(this.now());
  }

  /** Print any line without garbling the live line. */
  print(line: string): void {
    if (this.finished) {
      this.out.write(line + "\n");
      return;
    }
    if (this.live) {
      // One write: clear the live line, the plain line, the live line again.
      const t = this.now();
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

  /** Moving-average training loss (window mean), NaN before the first step. */
  get movingAverageLoss(): number {
    return this.window.meanLoss();
  }

  get lastValLoss(): number | null {
    return this.lastVal;
  }

  stats(): SessionStats {
    return {
      steps: this.curStep - this.startStep,
      tokens: this.sessTokens,
      trainSeconds: this.sessTrainSecs,
      wallSeconds: (this.now() - this.t0) / 1000,
    };
  }

  private tag(): string {
    return `[${this.phase}]`;
  }

  private stepStr(step: number): string {
    const w = String(this.totalSteps).length;
    return `${String(step).padStart(w)}/${this.totalSteps}`;
  }

  /** Seconds left, from this session's wall time per step; null before the first step. */
  private etaSeconds(t: number): number | null {
    const done = this.curStep - this.startStep;
    if (done <= 0) return null;
    return (((t - this.t0) / 1000) / done) * Math.max(0, this.totalSteps - this.curStep);
  }

  private formatLog(l: TrainLog, t: number, nonFinite: number): string {
    const parts = [
      `${this.tag()} step ${this.stepStr(l.step)}`,
      `lr ${fmtLr(l.lr)}`,
      `train_loss ${fmtLoss(l.train_loss)}`,
    ];
    if (nonFinite > 0) parts.push(`non-finite losses ${nonFinite}`);
    if (l.last_val_loss !== null) parts.push(`last_val_loss ${fmtLoss(l.last_val_loss)}`);
    parts.push(`tokens/s ${Math.round(l.tokens_per_s)}`);
    parts.push(`elapsed ${fmtDuration((t - this.t0) / 1000)}`);
    const eta = this.etaSeconds(t);
    if (eta !== null && l.step < this.totalSteps) parts.push(`eta ${fmtDuration(eta)}`);
    return parts.join(" | ");
  }

  /**
   * The live line, fitted to the terminal width (a wrapped line could not be redrawn). Fields
   * are padded to fixed widths so the line, and the bar width derived from it, do not jitter.
   */
  private liveText(): string {
    const t = this.now();
    const width = Math.max(20, (this.out.columns ?? 80) - 1);
    const total = this.totalSteps;
    const frac = total > 0 ? Math.min(1, this.curStep / total) : 1;
    const eta = this.etaSeconds(t);
    const some = this.window.count > 0;
    const tag = this.tag();
    const counter = `${String(this.curStep).padStart(String(total).length)}/${total} ${(frac * 100).toFixed(1).padStart(5)}%`;
    // In order of importance: the last ones go first when the terminal is narrow.
    const segs = [
      `eta ${(eta === null ? "-" : fmtDuration(eta)).padEnd(6)}`,
      `${(some ? fmtRate(this.window.tokensPerSecond()) : "-").padStart(6)} tok/s`,
      `loss ${some ? fmtLoss(this.window.meanLoss()).padStart(7) : "-".padEnd(7)}`,
      `lr ${(some ? fmtLr(this.curLr) : "-").padEnd(7)}`,
      `val ${this.lastVal !== null ? fmtLoss(this.lastVal).padStart(7) : "-".padEnd(7)}`,
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
