/**
 * metrics.jsonl: one JSON object per line: the build that wrote the run, every optimizer step's
 * loss, a train record per logged step, and every eval.
 *
 *   {"phase":"pretrain","kind":"train","step":50,"lr":0.000075,"train_loss":6.21,"val_loss":null,
 *    "tokens_per_s":11834.2,"target_tokens":409600,"wall_time_s":41.3,"time":"2025-01-01T10:00:41.300Z"}
 *
 * Every key above is always present. A record carries only its own measurement, the rest is null:
 *   run:   the build that writes the records after it, in one more key, "version" (the line
 *          `train --version` prints, src/version.ts); step: where that session started. The
 *          first record of a phase started fresh; on resume, written again only when the build
 *          differs from the phase's last run record (a resume by the same build adds nothing).
 *   step:  one per applied optimizer step: lr, train_loss (that step's loss).
 *   train: lr, train_loss (the mean of the step records since the previous train record, see
 *          stats.ts), tokens_per_s, target_tokens (the targets the loss counted in the phase
 *          through this step: every token in pretrain, the answers' tokens in SFT).
 *   eval:  lr (of that step), val_loss; train_loss, tokens_per_s and target_tokens null.
 * target_tokens is null in every other record, and in files written before it existed.
 * Readers that draw or compare curves take the kinds they know ("train", "eval") and skip the rest.
 * A non-finite loss (divergence) is stored as null. `wall_time_s` counts seconds since the run's
 * first start and continues across resumes (time between a crash and the resume is not counted).
 * One file may hold several phases (a pipeline writes pretrain, then sft): `phase` tells them
 * apart and steps are per phase.
 *
 * Resume without duplicated or missing steps: `MetricsLog.open(path, { phase, resumeStep })`
 *  - drops the records of `phase` with step > resumeStep (written after the checkpoint the run
 *    resumes from), or all of them when resumeStep is null (fresh start), and all records of
 *    the phases in `dropPhases` (a pipeline restarting pretrain makes old sft records stale);
 *  - drops a torn last line (a crash in the middle of an append);
 *  - if anything was dropped, rewrites the file atomically (temp file, fsync, rename, fsync dir).
 * Then `append*` adds lines; steps must increase per (phase, kind), so a loop bug that would
 * log a step twice throws instead of corrupting the file. Step records are buffered: written
 * (one write, one fsync) with the next train or eval record, or by `flush`.
 * Contract for the loop: append a step's records (step, train, eval) and `flush` BEFORE saving
 * that step's checkpoint, so that every record with step <= checkpoint step is on disk when it
 * is written. Then a resumed run refills its train-loss window from `unloggedSteps()` (the step
 * records after the last train record) and its metrics equal an uninterrupted run's, record for
 * record, but for the wall-clock fields (wall_time_s, time, tokens_per_s); no checkpoint key needed.
 *
 * Usage:
 *   const m = MetricsLog.open(join(dir, "metrics.jsonl"), { phase, resumeStep: resumed ? step : null, build });
 *   const last = m.lastEval(phase);           // show last val loss on resume
 *   stats.restoreWindow(m.unloggedSteps().map((r) => ({ step: r.step, loss: r.train_loss })));  // as before the stop
 *   ... m.appendStep(...) / m.appendTrain(log) / m.appendEval({ step, lr, val_loss }) / m.flush() ...
 *   writeLossSvg(join(dir, "loss.svg"), m.records());
 * Reading alone (for the SVG or tools): readMetrics(path).
 */

import { closeSync, constants, existsSync, fsyncSync, lstatSync, mkdirSync, openSync, writeSync } from "node:fs";
import { readInputText } from "../util/input-file.ts";
import { dirname } from "node:path";
import { writeTextAtomic } from "../util/atomic.ts";
import { InputError } from "../errors";

export type MetricsPhase = "pretrain" | "sft";
export const METRICS_PHASES: readonly MetricsPhase[] = ["pretrain", "sft"];

export type MetricsKind = "run" | "step" | "train" | "eval";
export const METRICS_KINDS: readonly MetricsKind[] = ["run", "step", "train", "eval"];

export interface MetricsRecord {
  phase: MetricsPhase;
  kind: MetricsKind;
  step: number;
  lr: number | null;
  train_loss: number | null;
  val_loss: number | null;
  tokens_per_s: number | null;
  /** Always written; optional for records built by hand (then null). */
  target_tokens?: number | null;
  wall_time_s: number;
  time: string;
  /** Run records only: the build's version line. */
  version?: string;
}

export interface OpenOptions {
  /** Phase this session writes. */
  phase: MetricsPhase;
  /** Step of the checkpoint resumed from, or null for a fresh start. */
  resumeStep: number | null;
  /** Phases whose records are all dropped (stale because an earlier phase restarts). */
  dropPhases?: MetricsPhase[];
  /** The version line of this build: a run record when it is not the phase's last one (see top). */
  build?: string;
  /** Monotonic clock, ms (wall_time_s). Default performance.now. */
  now?: () => number;
  /** Calendar clock, ms since the epoch (the "time" field). Default Date.now. */
  epochMs?: () => number;
}

export interface TrainRecordInput {
  step: number;
  lr: number;
  train_loss: number;
  tokens_per_s: number;
  /** Optional for callers that do not count targets (then null). */
  target_tokens?: number;
}

export interface StepRecordInput {
  step: number;
  lr: number;
  /** This step's training loss. */
  loss: number;
}

export interface EvalRecordInput {
  step: number;
  lr: number | null;
  val_loss: number;
}

const KEYS = ["phase", "kind", "step", "lr", "train_loss", "val_loss", "tokens_per_s", "wall_time_s", "time"] as const;

function numOrNull(v: number | null | undefined): number | null {
  return v === null || v === undefined || !Number.isFinite(v) ? null : v;
}

/** Validate one parsed line; returns an error text or the record. */
function toRecord(v: unknown): MetricsRecord | string {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return "expected a JSON object";
  const o = v as Record<string, unknown>;
  for (const k of KEYS) if (!(k in o)) return `missing key "${k}"`;
  if (!METRICS_PHASES.includes(o.phase as MetricsPhase)) return `phase must be one of ${METRICS_PHASES.join(", ")}, got ${JSON.stringify(o.phase)}`;
  if (!METRICS_KINDS.includes(o.kind as MetricsKind)) return `kind must be one of ${METRICS_KINDS.join(", ")}, got ${JSON.stringify(o.kind)}`;
  if (o.kind === "run" && typeof o.version !== "string") return `a run record needs "version", a string; got ${JSON.stringify(o.version)}`;
  if (typeof o.step !== "number" || !Number.isInteger(o.step) || o.step < 0) return `step must be an integer >= 0, got ${JSON.stringify(o.step)}`;
  for (const k of ["lr", "train_loss", "val_loss", "tokens_per_s"] as const) {
    if (o[k] !== null && typeof o[k] !== "number") return `${k} must be a number or null, got ${JSON.stringify(o[k])}`;
  }
  const targets = o.target_tokens ?? null; // absent in files written before it existed
  if (targets !== null && typeof targets !== "number") return `target_tokens must be a number or null, got ${JSON.stringify(targets)}`;
  if (typeof o.wall_time_s !== "number" || !(o.wall_time_s >= 0)) return `wall_time_s must be a number >= 0, got ${JSON.stringify(o.wall_time_s)}`;
  if (typeof o.time !== "string") return `time must be an ISO date string, got ${JSON.stringify(o.time)}`;
  return {
    phase: o.phase as MetricsPhase,
    kind: o.kind as MetricsKind,
    step: o.step,
    lr: o.lr as number | null,
    train_loss: o.train_loss as number | null,
    val_loss: o.val_loss as number | null,
    tokens_per_s: o.tokens_per_s as number | null,
    target_tokens: targets as number | null,
    wall_time_s: o.wall_time_s,
    time: o.time,
    ...(o.kind === "run" ? { version: o.version as string } : {}),
  };
}

interface Parsed {
  records: MetricsRecord[];
  /** The last line was torn (unparseable) and left out. */
  tornTail: boolean;
  /** The file does not end with a newline (even if its last line was whole). */
  unterminated: boolean;
}

/** Parse file text. Only the LAST line may be torn; a bad line elsewhere is an error. */
function parseText(path: string, text: string): Parsed {
  const lines = text.split("\n");
  const unterminated = text.length > 0 && !text.endsWith("\n");
  if (!unterminated) lines.pop(); // the empty string after the final "\n"
  const records: MetricsRecord[] = [];
  let tornTail = false;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    const last = i === lines.length - 1;
    if (line.trim() === "") {
      if (last) continue;
      throw new InputError(`${path}:${i + 1}: empty line in metrics file; expected one JSON record per line`);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch (e) {
      if (last) {
        tornTail = true; // a crash during the last append
        continue;
      }
      throw new InputError(`${path}:${i + 1}: not valid JSON (${(e as Error).message}); expected one metrics record per line`);
    }
    const r = toRecord(parsed);
    if (typeof r === "string") {
      if (last && unterminated) {
        tornTail = true;
        continue;
      }
      throw new InputError(`${path}:${i + 1}: bad metrics record: ${r}`);
    }
    records.push(r);
  }
  return { records, tornTail, unterminated };
}

/** Read and validate a metrics file; a missing file is an empty list; a torn last line is skipped. */
export function readMetrics(path: string): MetricsRecord[] {
  if (!existsSync(path)) return [];
  return parseText(path, readMetricsText(path)).records;
}

/** Largest metrics.jsonl read (a record is about 200 bytes: millions of records). */
const MAX_METRICS_BYTES = 1 << 30;

/** metrics.jsonl as text: a regular file, not a symbolic link (src/util/input-file.ts). */
function readMetricsText(path: string): string {
  return readInputText(path, { maxBytes: MAX_METRICS_BYTES, expected: "the run's metrics.jsonl (a regular file written by train)", noFollow: true });
}

function isSymlink(path: string): boolean {
  try {
    return lstatSync(path).isSymbolicLink();
  } catch {
    return false;
  }
}

function serialize(r: MetricsRecord): string {
  const o: MetricsRecord = {
    phase: r.phase,
    kind: r.kind,
    step: r.step,
    lr: numOrNull(r.lr),
    train_loss: numOrNull(r.train_loss),
    val_loss: numOrNull(r.val_loss),
    tokens_per_s: numOrNull(r.tokens_per_s),
    target_tokens: numOrNull(r.target_tokens),
    wall_time_s: Math.round(r.wall_time_s * 1000) / 1000,
    time: r.time,
    ...(r.kind === "run" ? { version: r.version } : {}),
  };
  return JSON.stringify(o) + "\n";
}

/** Best (lowest) val loss of a phase and the step of that eval; the earliest on ties. */
export function bestEval(records: readonly MetricsRecord[], phase: MetricsPhase): MetricsRecord | null {
  let best: MetricsRecord | null = null;
  for (const r of records) {
    if (r.phase !== phase || r.kind !== "eval" || r.val_loss === null) continue;
    if (best === null || r.val_loss < best.val_loss!) best = r;
  }
  return best;
}

export class MetricsLog {
  private readonly recs: MetricsRecord[];
  /** Step records not yet on disk (written with the next train or eval record, or by flush). */
  private pending: MetricsRecord[] = [];
  private readonly wallOffset: number;
  private readonly t0: number;
  private readonly now: () => number;
  private readonly epochMs: () => number;

  private constructor(readonly path: string, readonly phase: MetricsPhase, recs: MetricsRecord[], o: OpenOptions) {
    this.recs = recs;
    this.now = o.now ?? (() => performance.now());
    this.epochMs = o.epochMs ?? (() => Date.now());
    this.t0 = this.now();
    this.wallOffset = recs.reduce((m, r) => Math.max(m, r.wall_time_s), 0);
  }

  /** Open for appending, after dropping what a resume at `resumeStep` makes stale (see top). */
  static open(path: string, o: OpenOptions): MetricsLog {
    if (o.resumeStep !== null && (!Number.isInteger(o.resumeStep) || o.resumeStep < 0)) {
      throw new Error(`metrics: resumeStep must be an integer >= 0 or null, got ${o.resumeStep}`);
    }
    let kept: MetricsRecord[] = [];
    mkdirSync(dirname(path), { recursive: true });
    if (existsSync(path) || isSymlink(path)) {
      const p = parseText(path, readMetricsText(path));
      const drop = new Set<MetricsPhase>(o.dropPhases ?? []);
      kept = p.records.filter(
        (r) => !drop.has(r.phase) && !(r.phase === o.phase && (o.resumeStep === null || r.step > o.resumeStep)),
      );
      if (kept.length !== p.records.length || p.tornTail || p.unterminated) {
        writeTextAtomic(path, kept.map(serialize).join(""));
      }
    }
    const log = new MetricsLog(path, o.phase, kept, o);
    if (o.build !== undefined && log.last("run")?.version !== o.build) log.appendRun(o.resumeStep ?? 0, o.build);
    return log;
  }

  /** All records in file order (after the resume clean-up and this session's appends). */
  records(): MetricsRecord[] {
    return [...this.recs, ...this.pending];
  }

  /** Seconds since the run's first start (continues across resumes). */
  wallTimeS(): number {
    return this.wallOffset + (this.now() - this.t0) / 1000;
  }

  /** The most recent eval record of a phase, or null. */
  lastEval(phase: MetricsPhase = this.phase): MetricsRecord | null {
    return this.last("eval", phase);
  }

  /**
   * The step records of this phase after its last train record, in step order: the steps
   * whose losses the next train record averages. After a resume, the steps between the last
   * log line and the checkpoint (TrainStats.restoreWindow takes them).
   */
  unloggedSteps(): MetricsRecord[] {
    const out: MetricsRecord[] = [];
    for (let i = this.recs.length - 1; i >= 0; i--) {
      const r = this.recs[i]!;
      if (r.phase !== this.phase) continue;
      if (r.kind === "train") break;
      if (r.kind === "step") out.push(r);
    }
    return out.reverse();
  }

  /** One applied optimizer step's loss; buffered until the next train or eval record or `flush`. */
  appendStep(s: StepRecordInput): MetricsRecord {
    const rec = this.record("step", { lr: s.lr, train_loss: s.loss, val_loss: null, tokens_per_s: null }, s.step);
    this.pending.push(rec);
    return rec;
  }

  appendTrain(t: TrainRecordInput): MetricsRecord {
    return this.write({ ...this.record("train", { lr: t.lr, train_loss: t.train_loss, val_loss: null, tokens_per_s: t.tokens_per_s }, t.step), target_tokens: numOrNull(t.target_tokens) });
  }

  appendEval(e: EvalRecordInput): MetricsRecord {
    return this.write(this.record("eval", { lr: e.lr, train_loss: null, val_loss: e.val_loss, tokens_per_s: null }, e.step));
  }

  /** Writes the buffered step records (and fsyncs): before a checkpoint save, and at the end. */
  flush(): void {
    if (this.pending.length > 0) this.write(null);
  }

  private appendRun(step: number, version: string): void {
    const rec = this.record("run", { lr: null, train_loss: null, val_loss: null, tokens_per_s: null }, step, true);
    this.write({ ...rec, version });
  }

  /** The last record of `kind` of a phase, or null. */
  private last(kind: MetricsKind, phase: MetricsPhase = this.phase): MetricsRecord | null {
    for (let i = this.recs.length - 1; i >= 0; i--) {
      const r = this.recs[i]!;
      if (r.phase === phase && r.kind === kind) return r;
    }
    return null;
  }

  /** A new record of this phase, checked to come after the last of its kind (equal steps allowed for run). */
  private record(
    kind: MetricsKind,
    v: Pick<MetricsRecord, "lr" | "train_loss" | "val_loss" | "tokens_per_s">,
    step: number,
    sameStepAllowed = false,
  ): MetricsRecord {
    if (!Number.isInteger(step) || step < 0) throw new Error(`metrics: step must be an integer >= 0, got ${step}`);
    const before = kind === "step" ? (this.pending.at(-1) ?? this.last(kind)) : this.last(kind);
    if (before !== null && (step < before.step || (step === before.step && !sameStepAllowed))) {
      throw new Error(`metrics: ${this.phase} ${kind} record for step ${step} after step ${before.step} in ${this.path}; steps must increase`);
    }
    return {
      phase: this.phase,
      kind,
      step,
      lr: numOrNull(v.lr),
      train_loss: numOrNull(v.train_loss),
      val_loss: numOrNull(v.val_loss),
      tokens_per_s: numOrNull(v.tokens_per_s),
      target_tokens: null,
      wall_time_s: Math.round(this.wallTimeS() * 1000) / 1000,
      time: new Date(this.epochMs()).toISOString(),
    };
  }

  /** Appends the buffered step records and `rec` in one write, then fsyncs. */
  private write(rec: MetricsRecord): MetricsRecord;
  private write(rec: null): null;
  private write(rec: MetricsRecord | null): MetricsRecord | null {
    const recs = rec === null ? this.pending : [...this.pending, rec];
    // fsync: a checkpoint saved after this append must never survive a crash that these lines do not.
    // O_NOFOLLOW: a symlink put in place of the file must not redirect the append out of checkpoints/
    const fd = openSync(this.path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW, 0o666);
    try {
      writeSync(fd, recs.map(serialize).join(""));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    this.recs.push(...recs);
    this.pending = [];
    return rec;
  }
}
