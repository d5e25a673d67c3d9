/**
 * The hand-off from `--phase pretrain` to `--phase sft` in one folder. Pretrain alone writes
 * checkpoints/{step_*,latest,best}.pt; SFT writes the same names in checkpoints/. Before SFT
 * writes anything, a finished pretrain run there moves to checkpoints/pretrain/, where
 * `--phase pipeline` keeps it, so the two commands end as one pipeline does.
 *
 * The move is renames only (no copy of GBs) and crash-safe, as an idempotent sequence:
 *   1. write checkpoints/pretrain/.moving atomically: the names to move, latest.pt last
 *   2. rename each checkpoints/NAME to checkpoints/pretrain/NAME (skipped if already there)
 *   3. flush both folders, remove .moving
 * A rename is atomic, so a kill at any point leaves every file whole, in one folder or the
 * other; a rerun that finds .moving redoes 2 and 3. SFT never runs while .moving exists.
 * SFT alone never moves an unfinished pretrain run (latest step < total_steps): it stops
 * and says how to finish it. `--phase pipeline` after `--phase pretrain` moves it the same
 * way, finished or not: its pretrain phase continues it in checkpoints/pretrain/.
 */
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { readCheckpointHead, type LoadedCheckpoint } from "../checkpoint/checkpoint.ts";
import { phaseOfTrainCfg, TRAIN_DEFAULTS, type SftConfig } from "../config.ts";
import { InputError } from "../errors.ts";
import { removeStaleTempFiles, writeTextAtomic, writingTo } from "../util/atomic.ts";
import { findConfigs, loadInitCheckpoint, missingInitFrom, runFiles, show, STEP_FILE } from "./start.ts";

const MARKER = ".moving";

/**
 * Tests kill the process after a step of the move (1: marker written, 2..n+1: the renames,
 * n+2: marker removed) through TRAIN_TEST_KILL_AFTER_MOVE_STEP, to check that a rerun
 * finishes it. Read here and nowhere else.
 */
function testKillPoint(step: number): void {
  if (process.env.TRAIN_TEST_KILL_AFTER_MOVE_STEP === String(step)) process.kill(process.pid, "SIGKILL");
}

/** Best effort: makes the renames in a folder durable (some file systems cannot fsync a folder). */
function flushFolder(dir: string): void {
  let fd = -1;
  try {
    fd = openSync(dir, "r");
    fsyncSync(fd);
  } catch {
    // not durable across a power loss on such a file system; the files are whole regardless
  } finally {
    if (fd >= 0) closeSync(fd);
  }
}

function readMarker(path: string, o: HandoffOptions): string[] {
  let names: unknown;
  try {
    names = (JSON.parse(readFileSync(path, "utf8")) as { files?: unknown }).files;
  } catch {
    names = null;
  }
  if (!Array.isArray(names) || !names.every((n) => typeof n === "string" && (STEP_FILE.test(n) || n === "best.pt" || n === "latest.pt"))) {
    throw new InputError(
      `${path}: not a move record written by train (expected {"files": [checkpoint names]}). It marks a move of a pretrain run from ${show(o.repoRoot, o.checkpointDir)}/ to ${show(o.repoRoot, o.pretrainDir)}/: ` +
        `move that run's checkpoints still in ${show(o.repoRoot, o.checkpointDir)}/ there by hand, delete ${show(o.repoRoot, path)}, then ${o.command}`,
    );
  }
  return names as string[];
}

/** Steps 2 and 3 of the move (see the top of this file); returns the names it renamed. */
function finishMove(from: string, to: string, names: readonly string[]): string[] {
  const moved: string[] = [];
  names.forEach((name, i) => {
    const src = join(from, name);
    const dst = join(to, name);
    if (existsSync(src)) {
      if (existsSync(dst)) throw new InputError(`${src} and ${dst} both exist, so the move of the pretrain run cannot finish; keep one of them, then run the same command again`);
      writingTo(dst, () => renameSync(src, dst));
      moved.push(name);
    }
    testKillPoint(i + 2);
  });
  flushFolder(from);
  flushFolder(to);
  writingTo(join(to, MARKER), () => unlinkSync(join(to, MARKER)));
  flushFolder(to);
  testKillPoint(names.length + 2);
  return moved;
}

/** A run's total_steps: its config's own, else the default it recorded, else today's default. */
function totalStepsOf(ckpt: LoadedCheckpoint): number {
  type WithTrainCfg = { train_cfg?: { total_steps?: unknown } } | null | undefined;
  for (const t of [(ckpt.trainCfg as WithTrainCfg)?.train_cfg?.total_steps, (ckpt.opt?.trainDefaults as WithTrainCfg)?.train_cfg?.total_steps]) {
    if (typeof t === "number") return t;
  }
  return TRAIN_DEFAULTS.total_steps;
}

/** The shell command that moves the run by hand, naming only files that are there. */
function handMove(repoRoot: string, from: string, to: string, names: readonly string[]): string {
  const steps = names.filter((n) => STEP_FILE.test(n));
  const shown = [...(steps.length > 0 ? ["step_*.pt"] : []), ...names.filter((n) => !STEP_FILE.test(n))].map((n) => join(show(repoRoot, from), n));
  return `mkdir -p ${show(repoRoot, to)} && mv ${shown.join(" ")} ${show(repoRoot, to)}/`;
}

/** Checkpoint names for one line: a long row of step files as its first and last. */
function listed(names: readonly string[]): string {
  const steps = names.filter((n) => STEP_FILE.test(n));
  const shown = steps.length > 3 ? [`${steps[0]} ... ${steps[steps.length - 1]}`] : steps;
  return [...shown, ...names.filter((n) => !STEP_FILE.test(n))].join(", ");
}

export interface HandoffOptions {
  /**
   * Who takes over checkpoints/: SFT alone (moves a finished pretrain run only), or a
   * pipeline (moves an unfinished one too: its pretrain phase continues it there).
   */
  by: "sft" | "pipeline";
  repoRoot: string;
  /** checkpoints/: where pretrain alone wrote and SFT writes. */
  checkpointDir: string;
  /** checkpoints/pretrain/: where the pretrain run goes. */
  pretrainDir: string;
  /** The SFT config (SFT alone starts from its init_from). */
  sft: SftConfig;
  /** The command that was run, for "run the same command again". */
  command: string;
  /** false: only finish an interrupted move (a pipeline told --resume PATH or --no-resume). */
  startNew: boolean;
  print: (line: string) => void;
}

/**
 * Before SFT alone (or a pipeline) writes anything: finishes an interrupted move, or moves
 * a pretrain run out of checkpoints/ into checkpoints/pretrain/ (one line of output).
 * Refuses (exit 2, nothing moved) a pretrain run without latest.pt, a checkpoints/pretrain/
 * that already holds a run, and for SFT alone an unfinished pretrain run.
 */
export function movePretrainRunAside(o: HandoffOptions): void {
  const { checkpointDir: from, pretrainDir: to } = o;
  const fromShown = `${show(o.repoRoot, from)}/`;
  const toShown = `${show(o.repoRoot, to)}/`;
  const marker = join(to, MARKER);
  for (const path of removeStaleTempFiles(to)) o.print(`removed ${show(o.repoRoot, path)}, left by an interrupted write`);
  if (existsSync(marker)) {
    const moved = finishMove(from, to, readMarker(marker, o));
    o.print(`${o.by}: finished moving the pretrain run from ${fromShown} to ${toShown} (an earlier move was interrupted${moved.length > 0 ? `; renamed now: ${moved.join(", ")}` : ""})`);
    return;
  }
  if (!o.startNew || !existsSync(from)) return;
  const names = runFiles(from);
  const latest = join(from, "latest.pt");
  if (!names.includes("latest.pt")) {
    const best = join(from, "best.pt");
    if (names.includes("best.pt") && phaseOfTrainCfg(readCheckpointHead(best).trainCfg) === "pretrain") {
      throw new InputError(
        `${best} is a pretrain checkpoint, but ${latest} is missing, so train cannot tell whether that pretrain run finished; ` +
          `${o.by === "sft" ? "SFT" : "the pipeline's SFT"} writes its own best.pt there and moves nothing it cannot check. Move the pretrain run yourself (${handMove(o.repoRoot, from, to, names)}), then run the same command again`,
      );
    }
    return;
  }
  // Heads only (data.pkl): a GPT-2-small run's checkpoints are GBs, and the tensors are
  // checked by the resume or init_from that reads them.
  let ckpt: LoadedCheckpoint;
  try {
    ckpt = readCheckpointHead(latest);
  } catch (e) {
    if (e instanceof InputError) return; // unreadable: nothing moves; the resume says what to do
    throw e;
  }
  if (phaseOfTrainCfg(ckpt.trainCfg) !== "pretrain") return; // SFT's own latest.pt: a resume
  if (names.includes("best.pt")) {
    const bestPhase = phaseOfTrainCfg(readCheckpointHead(join(from, "best.pt")).trainCfg);
    if (bestPhase !== "pretrain") {
      throw new InputError(
        `${latest} is a pretrain checkpoint, but ${join(from, "best.pt")} is ${bestPhase === null ? "of no known phase" : `an ${bestPhase} checkpoint`}: ` +
          `${fromShown} mixes two runs, and train moves only a whole pretrain run to ${toShown}; nothing was moved. Sort the files by hand (a pretrain run goes to ${toShown}), then ${o.command}`,
      );
    }
  }
  const totalSteps = totalStepsOf(ckpt);
  const finished = ckpt.step >= totalSteps;
  if (!finished && o.by === "sft") {
    const configs = findConfigs(o.repoRoot, "pretrain", ckpt.trainCfg);
    const finish = configs.length > 0 ? `train --phase pretrain --config ${configs[0]}` : `train --phase pretrain --config <the pretrain config it ran with, stored in ${show(o.repoRoot, latest)} as train_cfg>`;
    throw new InputError(
      `${latest} is a pretrain run at step ${ckpt.step} of its total_steps ${totalSteps}: not finished, so SFT neither moves it to ${toShown} nor starts from it; nothing was moved or written. ` +
        `To finish pretraining first: ${finish} (it resumes at step ${ckpt.step}), then ${o.command}. ` +
        `To start SFT from it as it is: ${handMove(o.repoRoot, from, to, names)}, then ${o.command}`,
    );
  }
  const init = o.sft.initFrom;
  if (o.by === "sft" && init !== null && !existsSync(init) && !(init === join(to, "best.pt") && names.includes("best.pt"))) {
    throw missingInitFrom(o.repoRoot, o.sft, from);
  }
  // An init_from outside the run being moved is read (and refused) before anything moves.
  if (o.by === "sft" && init !== null && init !== join(to, "best.pt") && existsSync(init)) loadInitCheckpoint(o.sft, init);
  const occupied = existsSync(to) ? runFiles(to) : [];
  if (occupied.length > 0) {
    throw new InputError(
      `${latest} is a pretrain run (step ${ckpt.step} of ${totalSteps}) to move to ${toShown}, but ${toShown} already holds checkpoints (${occupied.join(", ")}); ` +
        `${o.by === "sft" ? "SFT" : "the pipeline"} moves a pretrain run only into an empty ${toShown}: move or delete one of the two runs, then ${o.command}`,
    );
  }
  writingTo(to, () => mkdirSync(to, { recursive: true }));
  writingTo(marker, () => writeTextAtomic(marker, `${JSON.stringify({ files: names })}\n`));
  testKillPoint(1);
  finishMove(from, to, names);
  const run = finished ? `finished pretrain run (step ${ckpt.step})` : `pretrain run (step ${ckpt.step} of ${totalSteps}: its pretrain phase continues it there)`;
  o.print(`${o.by}: moved the ${run} from ${fromShown} to ${toShown} by renaming ${names.length} files (${listed(names)}); metrics.jsonl and loss.svg stay in ${fromShown}`);
}
