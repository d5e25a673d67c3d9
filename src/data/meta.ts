/**
 * The `<cache>.bin.meta.json` of a token cache: its fields, and the parser that checks
 * them (every problem of a meta is reported at once). Format: docs/cache-format.md.
 */
import { DataError } from "./errors.ts";
import { jsonDepthExceeds, MAX_JSON_DEPTH } from "../util/input-file.ts";
import type { CacheKind } from "./paths.ts";

export const CACHE_FORMAT = "train-token-cache";
export const CACHE_FORMAT_VERSION = 1;

export type Dtype = "uint16" | "uint32" | "int32";
export const DTYPE_BYTES: Readonly<Record<Dtype, number>> = { uint16: 2, uint32: 4, int32: 4 };

/** Example boundaries kept in a sidecar file next to the .bin (uint64 little endian). */
export interface BoundaryFile {
  file: string; // a file name in the directory of the meta (no path separators)
  dtype: "uint64";
  count: number; // num_examples + 1
}

export interface CacheMeta {
  format?: string;
  version?: number;
  kind?: CacheKind;
  dtype: Dtype;
  num_tokens: number;
  vocab_size: number;
  tokenizer: string;
  special_tokens: Record<string, number>;
  source?: string;
  split?: string;
  /** SFT: number of examples. */
  num_examples?: number;
  /** SFT: token offsets of the examples, num_examples + 1 of them, inline or in a sidecar. */
  boundaries?: number[] | BoundaryFile;
  [extra: string]: unknown;
}

/** Special tokens an SFT cache must declare (the masking rule and the padding need them). */
export const SFT_REQUIRED_SPECIALS = ["<|asst|>", "<|eot|>", "<|pad|>"] as const;

function isInt(x: unknown, min = 0): x is number {
  return typeof x === "number" && Number.isSafeInteger(x) && x >= min;
}

/**
 * Parses and checks a meta.json text. `kind` is the kind the cache is opened as (from its
 * directory); `modelV` the vocabulary of the model that will read it.
 */
/** A value for a message: its JSON, cut after 80 characters. */
function shortJson(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 80 ? `${s.slice(0, 80)}...` : s;
}

export function parseMeta(text: string, metaPath: string, kind: CacheKind, modelV: number): CacheMeta {
  let raw: unknown;
  if (jsonDepthExceeds(text, MAX_JSON_DEPTH)) {
    throw new DataError(`JSON nested deeper than ${MAX_JSON_DEPTH} levels; expected the cache meta object described in docs/cache-format.md`, metaPath);
  }
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new DataError(`invalid JSON (${(e as Error).message}); expected the cache meta object described in docs/cache-format.md`, metaPath);
  }
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    throw new DataError(`expected a JSON object, got ${Array.isArray(raw) ? "an array" : JSON.stringify(raw)}`, metaPath);
  }
  const m = raw as Record<string, unknown>;
  const problems: string[] = [];
  const need = (key: string, ok: boolean, expected: string) => {
    if (!ok) problems.push(key in m ? `"${key}" is ${shortJson(m[key])}, expected ${expected}` : `"${key}" is missing, expected ${expected}`);
  };
  if ("format" in m) need("format", m.format === CACHE_FORMAT, JSON.stringify(CACHE_FORMAT));
  if ("version" in m) need("version", m.version === CACHE_FORMAT_VERSION, String(CACHE_FORMAT_VERSION));
  if ("kind" in m) need("kind", m.kind === kind, `"${kind}" (the cache is in the ${kind}/ directory)`);
  need("dtype", typeof m.dtype === "string" && m.dtype in DTYPE_BYTES, `one of ${Object.keys(DTYPE_BYTES).map((d) => `"${d}"`).join(", ")}`);
  need("num_tokens", isInt(m.num_tokens), "an integer >= 0");
  need("vocab_size", isInt(m.vocab_size, 1), "an integer >= 1");
  if (isInt(m.vocab_size, 1) && m.vocab_size > modelV) {
    problems.push(`"vocab_size" is ${m.vocab_size}, larger than the model vocabulary V=${modelV}; expected <= ${modelV} (use a model with V >= ${m.vocab_size})`);
  }
  need("tokenizer", typeof m.tokenizer === "string" && m.tokenizer.length > 0, "a tokenizer name (string)");
  const specials = m.special_tokens;
  if (specials === null || typeof specials !== "object" || Array.isArray(specials)) {
    need("special_tokens", false, 'an object of token name -> id, e.g. {"<|asst|>": 258, "<|eot|>": 259}');
  } else {
    const vocab = isInt(m.vocab_size, 1) ? m.vocab_size : Infinity;
    for (const [name, id] of Object.entries(specials as Record<string, unknown>)) {
      if (!isInt(id)) problems.push(`special token ${name} has id ${JSON.stringify(id)}, expected an integer >= 0`);
      else if (id >= vocab) problems.push(`special token ${name} has id ${id}, expected < vocab_size ${vocab}`);
    }
    if (kind === "sft") {
      for (const name of SFT_REQUIRED_SPECIALS) {
        if (!(name in (specials as object))) problems.push(`special token ${name} is missing from "special_tokens"; an SFT cache needs ${SFT_REQUIRED_SPECIALS.join(", ")}`);
      }
    }
  }
  if (kind === "sft") {
    need("num_examples", isInt(m.num_examples), "the number of examples, an integer >= 0");
    const b = m.boundaries;
    if (Array.isArray(b)) {
      if (isInt(m.num_examples) && b.length !== m.num_examples + 1) {
        problems.push(`"boundaries" has ${b.length} offsets, expected num_examples + 1 = ${m.num_examples + 1}`);
      }
      const bad = b.findIndex((x) => !isInt(x));
      if (bad >= 0) problems.push(`"boundaries"[${bad}] is ${JSON.stringify(b[bad])}, expected an integer token offset >= 0`);
    } else if (b !== null && typeof b === "object") {
      const f = b as Record<string, unknown>;
      if (typeof f.file !== "string" || f.file.length === 0 || /[\\/]/.test(f.file) || f.file === "." || f.file === "..") {
        problems.push(`"boundaries.file" is ${JSON.stringify(f.file)}, expected a file name in the directory of the meta (no path separators)`);
      }
      if (f.dtype !== "uint64") problems.push(`"boundaries.dtype" is ${JSON.stringify(f.dtype)}, expected "uint64"`);
      if (!isInt(f.count, 1)) problems.push(`"boundaries.count" is ${JSON.stringify(f.count)}, expected num_examples + 1`);
      else if (isInt(m.num_examples) && f.count !== m.num_examples + 1) {
        problems.push(`"boundaries.count" is ${f.count}, expected num_examples + 1 = ${m.num_examples + 1}`);
      }
    } else {
      need("boundaries", false, 'the example offsets: an array of num_examples + 1 token offsets, or {"file": "<name>.idx", "dtype": "uint64", "count": num_examples + 1}');
    }
  }
  if (problems.length > 0) {
    throw new DataError(`invalid cache meta: ${problems.join("; ")}`, metaPath);
  }
  return m as CacheMeta;
}
