/**
 * The statistics of one training phase, owned by the loop (src/train/loop.ts): the numbers
 * metrics.jsonl records and the console shows (src/train/progress.ts only prints them).
 *
 * Moving average: a WINDOW mean, not an EMA. The train_loss of a log record is the mean loss
 * of the steps reported since the previous log record (`logEvery` steps), summed in step
 * order; tokens/s of a log record is the tokens of those steps / their training time. The
 * live line shows the mean over the last `logEvery` steps (a sliding window). Non-finite
 * losses are left out of the means and counted. A resumed run first refills both windows
 * with the losses of the steps between the last log record and its checkpoint
 * (`restoreWindow`, from metrics.jsonl's step records), so its log records carry the same
 * train_loss, to the bit, as an uninterrupted run's; tokens/s covers this session's steps.
 *
 * Step numbering: `step` is the number of COMPLETED optimizer steps (1 after the first one),
 * the number a checkpoint written after that step carries (step_{step:07d}.pt). Steps must
 * increase; a step the loop does not report (an update skipped for a non-finite gradient)
 * is allowed, its time then counts toward the next reported step.
 *
 * Tokens: `tokens` of a step is B*T (every position of the batch); its `targets` are the
 * targets the loss counts (all of them in pretrain; in SFT the answers' tokens, not the
 * prompts, padding or what follows <|eot|>). Both are counted for the phase, from the
 * counts before this session (`tokensBefore`, `targetsBefore`), over every step taken: a
 * step whose update was not applied (non-finite) is counted by `notApplied`, as the tokens
 * seen of the summary (steps x B*T) and the count of a resumed run (every step before it) are.
 *
 * Timing: a step's duration is the time since the previous step, or since the end of the
 * last eval or save (`evaluated`, `paused`), or since construction: time spent evaluating
 * or saving is not training time. The ETA uses wall time (evals included): remaining steps x
 * wall time per step of this session.
 */

export interface StatsOptions {
  /** Last step of the phase (exclusive loop bound = number of steps when done). */
  totalSteps: number;
  /** Completed steps before this session (0 on a fresh start, the checkpoint's step on resume). */
  startStep: number;
  /** Val loss of the last eval before this session, shown until the next eval (resume). */
  lastValLoss?: number | null;
  /** A log record every this many steps (and at the last step). Default 50. */
  logEvery?: number;
  /** Tokens of the phase's steps before this session (startStep x B*T). Default 0. */
  tokensBefore?: number;
  /** Counted targets of the phase's steps before this session. Default 0. */
  targetsBefore?: number;
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
  /** Targets the loss counted in the phase so far (through this step). */
  target_tokens: number;
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
  /** Targets the loss counted in this step. Default: `tokens` (every target counts). */
  targets?: number;
}

/** A step that is logged: its metrics record, and the non-finite losses left out of its mean. */
export interface LoggedStep {
  log: TrainLog;
  nonFiniteLosses: number;
}

export interface SessionStats {
  /** Steps completed in this session. */
  steps: number;
  /** Tokens processed in this session. */
  tokens: number;

  /** Training time of this session (evals and saves excluded), seconds. */
  trainSeconds: number;
  /** Wall time since the statistics began (this session), seconds. */
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

/** The running statistics of one phase in this session. */
export class TrainStats {
  readonly totalSteps: number;
  readonly startStep: number;
  readonly logEvery: number;
  readonly now: () => number;
  private readonly window: Window;
  private interval = new Interval();
  private readonly t0: number;
  private mark: number;
  private curStep: number;
  private curLr = NaN;
  private lastVal: number | null;
  private sessTokens = 0;
  private sessTrainSecs = 0;
  private phaseTok: number;
  private phaseTgt: number;

  constructor(o: StatsOptions) {
    const int = (v: number, name: string, min: number): number => {
      if (!Number.isInteger(v) || v < min) {
        throw new Error(`progress: ${name} must be an integer >= ${min}, got ${v}`);
      }
      return v;
    };
    this.totalSteps = int(o.totalSteps, "totalSteps", 0);
    this.startStep = int(o.startStep, "startStep", 0);
    this.logEvery = int(o.logEvery ?? 50, "logEvery", 1);
    this.now = o.now ?? (() => performance.now());
    this.window = new Window(this.logEvery);
    this.lastVal = o.lastValLoss ?? null;
    this.curStep = this.startStep;
    this.phaseTok = o.tokensBefore ?? 0;
    this.phaseTgt = o.targetsBefore ?? 0;
    this.t0 = this.now();
    this.mark = this.t0;
  }

  /**
   * Before the first step of a resumed session: the losses of the steps since the last log
   * record, up to `startStep`, in step order (their time and tokens belong to the session
   * that ran them, so they count toward neither tokens/s).
   */
  restoreWindow(steps: readonly { step: number; loss: number | null }[]): void {
    let prev = -1;
    for (const s of steps) {
      if (this.curStep !== this.startStep || !Number.isInteger(s.step) || s.step <= prev || s.step > this.startStep) {
        throw new Error(`progress: a restored step must come before this session's first step and after the one restored before it; got step ${s.step} (start ${this.startStep}, at ${this.curStep})`);
      }
      prev = s.step;
      const loss = s.loss ?? NaN; // metrics.jsonl stores a non-finite loss as null
      this.window.push(loss, 0, 0);
      this.interval.add(loss, 0, 0);
    }
  }

  /**
   * Records one completed step. Returns the log record when this step is logged (every
   * `logEvery` steps and at the last step), else null.
   */
  step(s: StepInfo): LoggedStep | null {
    if (!Number.isInteger(s.step) || s.step <= this.curStep) {
      throw new Error(`progress: step ${s.step} reported after step ${this.curStep}; steps must increase`);
    }
    const t = this.now();
    const dt = Math.max(0, (t - this.mark) / 1000);
    const prev = this.curStep;
    this.mark = t;
    this.curStep = s.step;
    this.curLr = s.lr;
    this.window.push(s.loss, s.tokens, dt);
    this.interval.add(s.loss, s.tokens, dt);
    this.sessTokens += s.tokens;
    this.sessTrainSecs += dt;
    this.phaseTok += s.tokens;
    this.phaseTgt += s.targets ?? s.tokens;

    // Log when a multiple of logEvery is reached (or passed, if a step went unreported).
    if (Math.floor(s.step / this.logEvery) > Math.floor(prev / this.logEvery) || s.step === this.totalSteps) {
      const iv = this.interval;
      this.interval = new Interval();
      return {
        log: { step: s.step, lr: s.lr, train_loss: iv.meanLoss(), last_val_loss: this.lastVal, tokens_per_s: iv.tokensPerSecond(), target_tokens: this.phaseTgt },
        nonFiniteLosses: iv.nonFinite,
      };
    }
    return null;
  }

  /** A step whose update was not applied: its tokens and targets were seen all the same. */
  notApplied(tokens: number, targets: number): void {
    this.phaseTok += tokens;
    this.phaseTgt += targets;
  }

  /** An eval ended: its val loss is the last one; the time it took is not training time. */
  evaluated(valLoss: number): void {
    this.lastVal = valLoss;
    this.mark = this.now();
  }

  /** A save (or other pause) ended: the time it took is not training time. */
  paused(): void {
    this.mark = this.now();
  }

  /** Completed steps (of the phase, not only this session). */
  get currentStep(): number {
    return this.curStep;
  }

  /** Learning rate of the last step, NaN before the first. */
  get lr(): number {
    return this.curLr;
  }

  /** Steps recorded in the sliding window (0 before the first step of the session). */
  get windowSteps(): number {
    return this.window.count;
  }

  /** Moving-average training loss (window mean), NaN before the first step. */
  get movingAverageLoss(): number {
    return this.window.meanLoss();
  }

  /** Tokens per second of training time over the sliding window. */
  get windowTokensPerSecond(): number {
    return this.window.tokensPerSecond();
  }

  /** Tokens of the phase so far (every position of every batch). */
  get phaseTokens(): number {
    return this.phaseTok;
  }

  /** Targets the loss counted in the phase so far. */
  get phaseTargets(): number {
    return this.phaseTgt;
  }

  get lastValLoss(): number | null {
    return this.lastVal;
  }

  /** Wall seconds since the session began, at time `t` (ms of `now`). */
  elapsedSeconds(t = this.now()): number {
    return (t - this.t0) / 1000;
  }

  /** Seconds left, from this session's wall time per step; null before the first step. */
  etaSeconds(t = this.now()): number | null {
    const done = this.curStep - this.startStep;
    if (done <= 0) return null;
    return (this.elapsedSeconds(t) / done) * Math.max(0, this.totalSteps - this.curStep);
  }

  session(): SessionStats {
    return {
      steps: this.curStep - this.startStep,
      tokens: this.sessTokens,
      trainSeconds: this.sessTrainSecs,
      wallSeconds: this.elapsedSeconds(),
    };
  }
}
