/**
 * Where a phase starts: the checkpoint it resumes (--resume PATH, or latest.pt unless
 * --no-resume), checked to be of this phase and this model shape; else SFT's init_from
 * weights with a fresh optimizer; else a fresh GPT-2 init.
 */
import { existsSync, readdirSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { loadCheckpoint, loadCheckpointInto, maxCheckpointBytes, type Checkpoint, type CheckpointHead, type LoadedCheckpoint, type LoadIntoOptions, type LoadOptions } from "../checkpoint/checkpoint.ts";
import type { NativeModel } from "../backend/native.ts";
import { INIT_FROM_NONE, loadPhaseConfig, phaseOfTrainCfg, PRETRAIN_CHECKPOINT_DIR, type PhaseConfig, type SftConfig } from "../config.ts";
import { InputError } from "../errors.ts";
import { modelCfgDifferences } from "../model/config.ts";
import { initParams } from "../model/layout.ts";

export type ResumeRequest = { kind: "auto" } | { kind: "none" } | { kind: "path"; path: string };

function article(word: string): string {
  return `${/^[aeiou]|^sft/i.test(word) ? "an" : "a"} ${word}`;
}

function capitalize(s: string): string {
  return s[0]!.toUpperCase() + s.slice(1);
}

/** A path as the user should read it: relative to REPO_ROOT when inside it. */
export function show(repoRoot: string, path: string): string {
  const rel = relative(repoRoot, path);
  return rel.startsWith("..") ? path : rel;
}

/** Refuses a checkpoint of another phase or another model shape, naming what differs. */
function checkCompatible(ckpt: CheckpointHead, path: string, o: ResumeOptions, what: string): void {
  const { config } = o;
  const phase = phaseOfTrainCfg(ckpt.trainCfg);
  if (phase !== config.phase) {
    throw new InputError(
      `${path}: ${what} is ${article(phase ?? "unknown-phase")} checkpoint, but this is the ${config.phase} phase. ` +
        `${capitalize(article(config.phase))} run never resumes another phase's checkpoint: pass --resume PATH with ${article(config.phase)} checkpoint, ` +
        `or --no-resume to start the ${config.phase} phase fresh (it then replaces the files in ${o.checkpointDir}).`,
    );
  }
  const diff = modelCfgDifferences(ckpt.modelCfg, config.model);
  if (diff.length > 0) {
    throw new InputError(
      `${path}: ${what} holds a model of another shape than ${config.modelCfgFile} (checkpoint vs config: ${diff.join(", ")}); ` +
        `use a matching model cfg, or --no-resume to start fresh`,
    );
  }
}

/**
 * The configs in REPO_ROOT/configs/ that load as a `phase` config, as paths to type after
 * --config; one whose JSON is `stored` (a checkpoint's train_cfg) comes first.
 */
export function findConfigs(repoRoot: string, phase: "pretrain" | "sft", stored?: unknown): string[] {
  const dir = join(repoRoot, "configs");
  if (!existsSync(dir)) return [];
  const found: Array<{ path: string; same: boolean }> = [];
  for (const name of readdirSync(dir).filter((n) => n.endsWith(".json")).sort()) {
    const path = join("configs", name);
    try {
      const config = loadPhaseConfig(path, phase, repoRoot);
      found.push({ path, same: stored !== undefined && JSON.stringify(config.raw) === JSON.stringify(stored) });
    } catch {
      // not a loadable config of this phase: never advised
    }
  }
  return [...found.filter((f) => f.same), ...found.filter((f) => !f.same)].map((f) => f.path);
}

export const STEP_FILE = /^step_\d{7}\.pt$/;

/** The checkpoints of one run in a folder (none if it does not exist), latest.pt last. */
export function runFiles(dir: string): string[] {
  const names = existsSync(dir) ? readdirSync(dir) : [];
  const steps = names.filter((n) => STEP_FILE.test(n)).sort();
  return [...steps, ...["best.pt", "latest.pt"].filter((n) => names.includes(n))];
}

/**
 * SFT's init_from checkpoint does not exist: where train looked, and a way to make it that
 * works in this folder (checkpoints/ and checkpoints/pretrain/ as they are).
 */
export function missingInitFrom(repoRoot: string, config: SftConfig, checkpointDir: string): InputError {
  const init = config.initFrom!;
  const why = config.initFromDefault ? `init_from is omitted in ${show(repoRoot, config.file)}, so SFT starts from the pretrain best` : `init_from in ${show(repoRoot, config.file)}`;
  const latest = join(checkpointDir, "latest.pt");
  const pretrainDir = join(repoRoot, PRETRAIN_CHECKPOINT_DIR);
  const pretrainRun = runFiles(pretrainDir);
  const here = runFiles(checkpointDir);
  const pretrains = findConfigs(repoRoot, "pretrain");
  const pretrainCommand = pretrains.length > 0 ? `train --phase pretrain --config ${pretrains[0]}` : `train --phase pretrain with a pretrain config (none loads in ${show(repoRoot, join(repoRoot, "configs"))}/)`;
  const steps: string[] = [];
  if (pretrainRun.length > 0) {
    steps.push(`${show(repoRoot, pretrainDir)}/ holds ${pretrainRun.join(", ")}: point init_from at one of them`);
  } else {
    const clear = here.length > 0 ? `move the run in ${show(repoRoot, checkpointDir)}/ (${here.join(", ")}) elsewhere, then ` : "";
    steps.push(`${clear}${pretrainCommand} makes it (this command then moves that run to ${show(repoRoot, pretrainDir)}/ and starts from its best.pt)`);
    steps.push("point init_from at a checkpoint of this model");
  }
  return new InputError(
    `${init}: the checkpoint to start SFT from does not exist (${why}). Looked at ${show(repoRoot, init)}, and at ${show(repoRoot, latest)} for a finished pretrain run to move there (${existsSync(latest) ? "it is not one" : "absent"}). ` +
      `${steps.join("; or ")}; or set "init_from": "${INIT_FROM_NONE}" to start SFT from fresh weights.`,
  );
}

/** The --resume PATH of the command line (relative to REPO_ROOT, or absolute); it must exist. */
export function resumePathOf(repoRoot: string, path: string): string {
  const abs = resolve(repoRoot, path);
  if (!existsSync(abs)) throw new InputError(`--resume ${path}: no such checkpoint file (${abs})`);
  return abs;
}

/** Where a checkpoint's tensors go: a model opened once the rest is checked (streamed into it), or none (whole arrays, to check it). */
export type OpenModel = (head: LoadedCheckpoint, path: string) => NativeModel;

/** loadCheckpoint, or loadCheckpointInto the model `into` opens. */
function loadInto(into: OpenModel | undefined, path: string, options: LoadIntoOptions): LoadedCheckpoint {
  return into ? loadCheckpointInto((head) => into(head, path), path, options) : loadCheckpoint(path, undefined, options);
}

/**
 * A checkpoint of this run's phase and model: the file may be no larger than a checkpoint
 * of the config's model, and model_cfg and train_cfg are checked before any tensor is read.
 */
function loadCompatible(path: string, o: ResumeOptions, what: string, into?: OpenModel): LoadedCheckpoint {
  return loadInto(into, path, { maxBytes: maxCheckpointBytes(o.config.model), accept: (head) => checkCompatible(head, path, o, what) });
}

/** The newest step_*.pt files the hint below tries (each is read whole: a bounded number). */
const MAX_HINT_CANDIDATES = 5;

/** Where to go when latest.pt cannot be read: the newest step_*.pt that loads, else a fresh start. */
function olderCheckpointHint(o: ResumeOptions): string {
  const steps = readdirSync(o.checkpointDir).filter((f) => /^step_\d+\.pt$/.test(f)).sort().reverse().slice(0, MAX_HINT_CANDIDATES);
  for (const name of steps) {
    const path = join(o.checkpointDir, name);
    try {
      loadCompatible(path, o, "");
      return `to resume from the newest intact checkpoint pass --resume ${show(o.repoRoot, path)}, or start fresh with --no-resume`;
    } catch {
      // torn or foreign as well: try an older one
    }
  }
  return "no step_*.pt beside it can be resumed instead: start fresh with --no-resume";
}

export interface ResumeOptions {
  config: PhaseConfig;
  repoRoot: string;
  /** The phase's checkpoint folder (where latest.pt is). */
  checkpointDir: string;
  resume: ResumeRequest;
}

/**
 * The checkpoint a phase resumes from (--resume PATH, or latest.pt unless --no-resume),
 * checked against the phase and model of the config, its tensors streamed into the model
 * `into` opens (without it: read to be checked); null: nothing to resume.
 */
export function resumeCheckpoint(o: ResumeOptions, into?: OpenModel): { ckpt: LoadedCheckpoint; path: string } | null {
  if (o.resume.kind === "path") {
    const path = resumePathOf(o.repoRoot, o.resume.path);
    return { ckpt: loadCompatible(path, o, "the --resume checkpoint", into), path };
  }
  const latest = join(o.checkpointDir, "latest.pt");
  if (o.resume.kind === "none" || !existsSync(latest)) return null;
  let incompatible: unknown = null;
  try {
    const ckpt = loadInto(into, latest, {
      maxBytes: maxCheckpointBytes(o.config.model),
      accept: (head) => {
        try {
          checkCompatible(head, latest, o, "the latest checkpoint");
        } catch (e) {
          incompatible = e; // a whole checkpoint of another phase or shape: no hint of an older one
          throw e;
        }
      },
    });
    return { ckpt, path: latest };
  } catch (e) {
    if (e === incompatible || !(e instanceof InputError)) throw e;
    throw new InputError(`${(e as Error).message}; ${olderCheckpointHint(o)}`);
  }
}

export interface Start {
  /** The model, holding the start's weights and optimizer state (the caller closes it). */
  model: NativeModel;
  step: number;
  bestValLoss: number | null;
  from: string;
  /** The checkpoint file resumed from, or null (fresh weights or SFT's init_from). */
  resumedFrom: string | null;
  /** The defaults the resumed run started with, as its checkpoint records them (or null). */
  trainDefaults: Readonly<Record<string, unknown>> | null;
  /** The optimizer state came from the checkpoint (else the optimizer is fresh). */
  resumedOptimizer: boolean;
}

/** How SFT's init_from is read: under the budgets of the run's model, refused (exit 2,
 *  naming it) when its model differs from the config's. */
function initFromOptions(config: PhaseConfig, initFrom: string): LoadOptions {
  return {
    maxBytes: maxCheckpointBytes(config.model),
    accept: (head) => {
      const diff = modelCfgDifferences(head.modelCfg, config.model);
      if (diff.length > 0) throw new InputError(`${initFrom}: its model differs from ${config.modelCfgFile} (checkpoint vs config: ${diff.join(", ")})`);
    },
  };
}

/** The checkpoint SFT starts from (init_from), read into arrays to be checked before anything moves (initFromOptions). */
export function loadInitCheckpoint(config: PhaseConfig, initFrom: string): Checkpoint {
  return loadCheckpoint(initFrom, undefined, initFromOptions(config, initFrom));
}

/**
 * Where a phase starts: a resumed checkpoint, SFT's init_from weights, or a fresh init,
 * in the model that open gives (given the resumed checkpoint's recorded defaults, or null
 * and null): checkpoints stream into it (src/checkpoint/checkpoint.ts, loadCheckpointInto).
 */
export function decideStart(o: ResumeOptions & { initFrom: string | null }, open: (trainDefaults: Readonly<Record<string, unknown>> | null, resumedFrom: string | null) => NativeModel): Start {
  const { config } = o;
  let model: NativeModel | null = null;
  try {
    const resumed = resumeCheckpoint(o, (head, path) => (model = open(head.opt?.trainDefaults ?? null, path)));
    if (resumed !== null) {
      const { ckpt, path } = resumed;
      if (ckpt.opt === null) model!.resetOptState(0);
      return { model: model!, step: ckpt.step, bestValLoss: ckpt.bestValLoss, from: `resumed from ${show(o.repoRoot, path)} at step ${ckpt.step}`, resumedFrom: path, trainDefaults: ckpt.opt?.trainDefaults ?? null, resumedOptimizer: ckpt.opt !== null };
    }
    if (o.initFrom !== null) {
      if (!existsSync(o.initFrom)) throw missingInitFrom(o.repoRoot, config as SftConfig, o.checkpointDir);
      const initFrom = o.initFrom;
      // the weights only: SFT starts with a fresh optimizer
      const ckpt = loadCheckpointInto(() => (model = open(null, null)), initFrom, { ...initFromOptions(config, initFrom), optimizer: false });
      model!.resetOptState(0);
      const defaultInit = config.phase === "sft" && config.initFromDefault;
      return { model: model!, step: 0, bestValLoss: null, from: `weights from ${show(o.repoRoot, o.initFrom)} (step ${ckpt.step}${defaultInit ? "; init_from omitted: the pretrain best" : ""}), fresh optimizer`, resumedFrom: null, trainDefaults: null, resumedOptimizer: false };
    }
    const asked = config.phase === "sft" ? ` (init_from "${INIT_FROM_NONE}" in ${show(o.repoRoot, config.file)}: not from pretrained weights)` : "";
    const fresh: NativeModel = (model = open(null, null));
    fresh.setParams(initParams(config.model, config.train.seed));
    fresh.resetOptState(0);
    return { model: fresh, step: 0, bestValLoss: null, from: `fresh GPT-2 init (seed ${config.train.seed})${asked}`, resumedFrom: null, trainDefaults: null, resumedOptimizer: false };
  } catch (e) {
    (model as NativeModel | null)?.close();
    throw e;
  }
}
