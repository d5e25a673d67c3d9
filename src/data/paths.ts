/**
 * Cache naming (locked by the spec) and the check that every cache a phase needs exists.
 *   <root>/streams/{wiki,roam,primer}_{train,val}.bin   + <same path>.meta.json
 *   <root>/sft/{dolly,oasst1,primer}_{train,val}.bin    + <same path>.meta.json
 * An SFT cache may keep its example boundaries in a sidecar `<same path>.idx`, named
 * by its meta (docs/cache-format.md).
 */
import { existsSync } from "node:fs";
import { jsonDepthExceeds, MAX_JSON_DEPTH, MAX_JSON_FILE_BYTES, readInputText } from "../util/input-file.ts";
import { join } from "node:path";
import { DataError } from "./errors.ts";

export const STREAM_SOURCES = ["wiki", "roam", "primer"] as const;
export const SFT_SOURCES = ["dolly", "oasst1", "primer"] as const;
export const SPLITS = ["train", "val"] as const;

export type StreamSource = (typeof STREAM_SOURCES)[number];
export type SftSource = (typeof SFT_SOURCES)[number];
export type Split = (typeof SPLITS)[number];
/** Directory name under the cache root: stream caches or SFT example caches. */
export type CacheKind = "streams" | "sft";

export const DEFAULT_CACHE_ROOT = "data/cache";

export interface CachePaths {
  bin: string;
  meta: string;
  /** Default sidecar of SFT example boundaries (used when the meta names a file). */
  idx: string;
}

export function sourcesOf(kind: CacheKind): readonly string[] {
  return kind === "streams" ? STREAM_SOURCES : SFT_SOURCES;
}

/** Paths of one cache. Throws a DataError for an unknown source or split. */
export function cachePaths(root: string, kind: CacheKind, source: string, split: Split | string): CachePaths {
  const allowed = sourcesOf(kind);
  if (!allowed.includes(source)) {
    throw new DataError(`unknown ${kind} source "${source}": expected one of ${allowed.join(", ")}`);
  }
  if (!(SPLITS as readonly string[]).includes(split)) {
    throw new DataError(`unknown split "${split}": expected one of ${SPLITS.join(", ")}`);
  }
  const bin = join(root, kind, `${source}_${split}.bin`);
  return { bin, meta: `${bin}.meta.json`, idx: `${bin}.idx` };
}

/** What a phase reads: its training mixture and its validation source. */
export interface PhaseDataSpec {
  phase: "pretrain" | "sft";
  /** Training mixture. */
  sources: Mixture;
  /** A stream source (its `_val` cache), or "sft" (the `_val` caches of the SFT mixture; sft phase only). */
  valSource: string;
}

/** One cache a phase reads. */
export interface CacheUse {
  kind: CacheKind;
  source: string;
  split: Split;
  paths: CachePaths;
  /** Why the phase needs it, e.g. "train mixture (p=0.784)". */
  role: string;
}

declare const normalized: unique symbol;

/**
 * A phase's training mixture, source -> probability: only the sources with p > 0, in the
 * order given, the probabilities summing to 1. Made once, by the config layer (mixtureOf),
 * and taken as is by the data layer.
 */
export type Mixture = Readonly<Record<string, number>> & { readonly [normalized]: true };

/** What is wrong with a mixture as written: unknown sources, bad or no positive probabilities. */
export function mixtureProblems(sources: Readonly<Record<string, unknown>>, kind: CacheKind): string[] {
  const allowed = sourcesOf(kind);
  const problems: string[] = [];
  let total = 0;
  for (const [name, p] of Object.entries(sources)) {
    if (!allowed.includes(name)) problems.push(`unknown source "${name}" (expected one of ${allowed.join(", ")})`);
    if (typeof p !== "number" || !Number.isFinite(p) || p < 0) {
      problems.push(`source "${name}": probability must be a finite number >= 0, got ${JSON.stringify(p)}`);
    } else total += p;
  }
  if (problems.length === 0 && !(total > 0)) problems.push("no source has a positive probability (expected at least one probability > 0)");
  return problems;
}

/**
 * Sources with a positive probability, normalized to sum 1, in the order given.
 * Throws a DataError listing the mixtureProblems.
 */
export function normalizeMixture(sources: Readonly<Record<string, number>>, kind: CacheKind): { source: string; prob: number }[] {
  const problems = mixtureProblems(sources, kind);
  if (problems.length > 0) throw new DataError(`invalid ${kind} mixture: ${problems.join("; ")}`);
  const total = Object.values(sources).reduce((a, p) => a + p, 0);
  return Object.entries(sources)
    .filter(([, p]) => p > 0)
    .map(([source, p]) => ({ source, prob: p / total }));
}

/** The Mixture of probabilities as written (normalizeMixture as a record). */
export function mixtureOf(sources: Readonly<Record<string, number>>, kind: CacheKind): Mixture {
  return Object.fromEntries(normalizeMixture(sources, kind).map(({ source, prob }) => [source, prob])) as Mixture;
}

/** Every cache the phase reads (training mixture, then validation), without duplicates. */
export function phaseCaches(root: string, spec: PhaseDataSpec): CacheUse[] {
  const kind: CacheKind = spec.phase === "pretrain" ? "streams" : "sft";
  const uses: CacheUse[] = [];
  for (const [source, prob] of Object.entries(spec.sources)) {
    uses.push({ kind, source, split: "train", paths: cachePaths(root, kind, source, "train"), role: `training mixture (p=${round4(prob)})` });
  }
  if (spec.valSource === "sft") {
    if (spec.phase !== "sft") {
      throw new DataError(`val_source "sft" is only allowed in the sft phase; the ${spec.phase} phase validates on a stream source (${STREAM_SOURCES.join(", ")})`);
    }
    for (const source of Object.keys(spec.sources)) {
      uses.push({ kind: "sft", source, split: "val", paths: cachePaths(root, "sft", source, "val"), role: "validation (val_source sft)" });
    }
  } else {
    if (!(STREAM_SOURCES as readonly string[]).includes(spec.valSource)) {
      const allowed = [...STREAM_SOURCES, ...(spec.phase === "sft" ? ["sft"] : [])];
      throw new DataError(`unknown val_source "${spec.valSource}": expected one of ${allowed.join(", ")}`);
    }
    uses.push({ kind: "streams", source: spec.valSource, split: "val", paths: cachePaths(root, "streams", spec.valSource, "val"), role: `validation (val_source ${spec.valSource})` });
  }
  return uses;
}

/** A missing file and why the phase needs it. */
export interface MissingFile {
  path: string;
  role: string;
}

/**
 * Every file of the phase's caches that does not exist: the .bin and the .meta.json of
 * each cache, and an SFT boundary sidecar that an existing meta names but is absent.
 */
export function missingCacheFiles(root: string, spec: PhaseDataSpec): MissingFile[] {
  const missing: MissingFile[] = [];
  for (const use of phaseCaches(root, spec)) {
    for (const path of [use.paths.bin, use.paths.meta]) {
      if (!existsSync(path)) missing.push({ path, role: `${use.source} ${use.split}, ${use.role}` });
    }
    const sidecar = use.kind === "sft" && existsSync(use.paths.meta) ? sidecarNamedBy(use.paths.meta) : undefined;
    if (sidecar !== undefined && !existsSync(sidecar)) {
      missing.push({ path: sidecar, role: `${use.source} ${use.split}, example boundaries named by ${use.paths.meta}` });
    }
  }
  return missing;
}

/** The sidecar path a meta.json names, if it is readable JSON naming one (else undefined). */
function sidecarNamedBy(metaPath: string): string | undefined {
  try {
    const text = readInputText(metaPath, { maxBytes: MAX_JSON_FILE_BYTES, expected: "a cache meta JSON file" });
    if (jsonDepthExceeds(text, MAX_JSON_DEPTH)) return undefined;
    const meta = JSON.parse(text) as { boundaries?: unknown };
    const b = meta.boundaries;
    if (b !== null && typeof b === "object" && !Array.isArray(b) && typeof (b as { file?: unknown }).file === "string") {
      return join(metaPath, "..", (b as { file: string }).file);
    }
  } catch {
    // an unreadable meta is reported when the cache is opened
  }
  return undefined;
}

/** The message for missing caches: the exact paths, the naming convention, how to build them. */
export function missingCachesMessage(root: string, spec: PhaseDataSpec, missing: readonly MissingFile[]): string {
  const kind: CacheKind = spec.phase === "pretrain" ? "streams" : "sft";
  const lines = [`missing cache files for phase ${spec.phase} (cache root ${root}):`];
  for (const m of missing) lines.push(`  ${m.path}    (${m.role})`);
  lines.push("expected naming convention:");
  lines.push(`  ${join(root, "streams")}/{source}_{split}.bin with source in ${STREAM_SOURCES.join("|")}, split in ${SPLITS.join("|")}`);
  lines.push(`  ${join(root, "sft")}/{source}_{split}.bin with source in ${SFT_SOURCES.join("|")}, split in ${SPLITS.join("|")}`);
  lines.push("  each with <same path>.meta.json (format: docs/cache-format.md)");
  if (kind === "sft") lines.push("the sft phase reads SFT example caches only: there is no fallback to the pretraining streams.");
  if (spec.valSource === "sft" && missing.some((m) => m.path.endsWith("_val.bin") && m.path.includes(`${join(root, "sft")}`))) {
    lines.push('val_source "sft" validates on the _val caches of the SFT mixture: build them, or set "val_source": "wiki" in the sft config.');
  }
  lines.push("build them with train prepare-data (train prepare-data --help), e.g.");
  lines.push(
    kind === "streams"
      ? `  train prepare-data text --source wiki --out ${root} FILES...`
      : `  train prepare-data dolly --source dolly --out ${root} databricks-dolly-15k.jsonl`,
  );
  return lines.join("\n");
}

/** Throws one DataError listing every missing file of the phase (see missingCachesMessage). */
export function assertCachesPresent(root: string, spec: PhaseDataSpec): void {
  const missing = missingCacheFiles(root, spec);
  if (missing.length > 0) throw new DataError(missingCachesMessage(root, spec, missing));
}

function round4(x: number): number {
  return Math.round(x * 1e4) / 1e4;
}
