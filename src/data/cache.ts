/**
 * Opening a token cache: the .bin mapped without a copy (Bun.mmap, a plain read when
 * mapping fails), its meta.json parsed, and everything checked once before training
 * touches it: file size vs dtype and token count, every id < vocab_size <= model V,
 * special ids, and for SFT the example boundaries (start at 0, strictly increasing,
 * end at num_tokens).
 */
import { existsSync } from "node:fs";
import { inputFileSize, MAX_JSON_FILE_BYTES, readInputFile, readInputText } from "../util/input-file.ts";
import { basename, dirname, join } from "node:path";
import { DataError } from "./errors.ts";
import { type CacheMeta, DTYPE_BYTES, type Dtype, parseMeta } from "./meta.ts";
import type { CacheKind } from "./paths.ts";

export type TokenArray = Uint16Array | Uint32Array | Int32Array;

export interface TokenCache {
  kind: CacheKind;
  binPath: string;
  metaPath: string;
  /** The boundary sidecar, when the meta names one. */
  boundaryPath: string | undefined;
  meta: CacheMeta;
  /** All tokens, a view of the mapped file (do not write to it). */
  tokens: TokenArray;
  numTokens: number;
  /** SFT: example i is tokens[offsets[i], offsets[i+1]); streams: null. */
  offsets: Float64Array | null;
  numExamples: number;
  /** Largest id in the cache (-1 when empty). */
  maxId: number;
  /** True when the .bin is memory-mapped, false when it was read into memory. */
  mapped: boolean;
  /** Milliseconds spent on the id scan and the boundary checks. */
  validationMs: number;
}

export interface OpenCacheOptions {
  /** streams/ or sft/: what the cache is opened as. */
  kind: CacheKind;
  /** Vocabulary size V of the model that reads the cache. */
  modelV: number;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** The bytes of a file, memory-mapped when possible (read-only use), else read. */
export function mapFile(path: string): { bytes: Uint8Array; mapped: boolean } {
  const size = cacheFileSize(path);
  if (size > 0) {
    try {
      return { bytes: Bun.mmap(path, { shared: false }), mapped: true };
    } catch {
      // fall through: some file systems refuse mmap
    }
  }
  return { bytes: readInputFile(path, { maxBytes: Number.MAX_SAFE_INTEGER, expected: "a token cache file" }), mapped: false };
}

/** The size of a cache file, which must be a regular file (src/util/input-file.ts): a FIFO or device is refused. */
function cacheFileSize(path: string): number {
  return inputFileSize(path, { maxBytes: Number.MAX_SAFE_INTEGER, expected: "a token cache file" });
}

function view(bytes: Uint8Array, dtype: Dtype): TokenArray {
  const n = bytes.byteLength / DTYPE_BYTES[dtype];
  if (dtype === "uint16") return new Uint16Array(bytes.buffer, bytes.byteOffset, n);
  if (dtype === "uint32") return new Uint32Array(bytes.buffer, bytes.byteOffset, n);
  return new Int32Array(bytes.buffer, bytes.byteOffset, n);
}

/**
 * Largest and smallest value of a token array (4 independent accumulators; the minimum
 * only for int32, the one dtype that can hold a negative id).
 */
export function idRange(a: TokenArray): { min: number; max: number } {
  const n = a.length;
  if (n === 0) return { min: 0, max: -1 };
  let m0 = a[0], m1 = a[0], m2 = a[0], m3 = a[0];
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const v0 = a[i], v1 = a[i + 1], v2 = a[i + 2], v3 = a[i + 3];
    if (v0 > m0) m0 = v0;
    if (v1 > m1) m1 = v1;
    if (v2 > m2) m2 = v2;
    if (v3 > m3) m3 = v3;
  }
  for (; i < n; i++) if (a[i] > m0) m0 = a[i];
  const max = Math.max(m0, m1, m2, m3);
  if (!(a instanceof Int32Array)) return { min: 0, max };
  let l0 = a[0], l1 = a[0];
  for (i = 0; i + 2 <= n; i += 2) {
    if (a[i] < l0) l0 = a[i];
    if (a[i + 1] < l1) l1 = a[i + 1];
  }
  if (i < n && a[i] < l0) l0 = a[i];
  return { min: Math.min(l0, l1), max };
}

/** Opens and validates a cache; throws a DataError naming the file and the problem. */
export function openCache(binPath: string, opts: OpenCacheOptions): TokenCache {
  const metaPath = `${binPath}.meta.json`;
  if (!Number.isSafeInteger(opts.modelV) || opts.modelV < 1) {
    throw new DataError(`model vocabulary V=${opts.modelV} is not a positive integer`, binPath);
  }
  if (!LITTLE_ENDIAN) throw new DataError("caches are little endian and this machine is big endian: not supported", binPath);
  const missing = [binPath, metaPath].filter((p) => !existsSync(p));
  if (missing.length > 0) {
    throw new DataError(`cache file(s) missing: ${missing.join(", ")}; a cache is <name>.bin plus <name>.bin.meta.json (docs/cache-format.md)`, missing[0]);
  }
  const meta = parseMeta(readInputText(metaPath, { maxBytes: MAX_JSON_FILE_BYTES, expected: "a cache meta JSON file" }), metaPath, opts.kind, opts.modelV);
  const width = DTYPE_BYTES[meta.dtype];
  const size = cacheFileSize(binPath);
  if (size % width !== 0) {
    throw new DataError(`size ${size} bytes is not a multiple of ${width} (dtype ${meta.dtype} in ${basename(metaPath)}): the file is truncated or the dtype is wrong`, binPath);
  }
  if (size / width !== meta.num_tokens) {
    throw new DataError(`holds ${size / width} tokens (${size} bytes of ${meta.dtype}), but ${basename(metaPath)} says num_tokens ${meta.num_tokens}: the file is truncated or does not belong to this meta`, binPath);
  }
  const { bytes, mapped } = mapFile(binPath);
  const tokens = view(bytes, meta.dtype);
  const t0 = performance.now();
  const { min, max } = idRange(tokens);
  if (min < 0 || max >= meta.vocab_size) {
    const bad = tokens.findIndex((t) => t < 0 || t >= meta.vocab_size);
    throw new DataError(`token ${bad} has id ${tokens[bad]}, expected 0 <= id < vocab_size ${meta.vocab_size} (model V=${opts.modelV})`, binPath);
  }
  let offsets: Float64Array | null = null;
  let boundaryPath: string | undefined;
  if (opts.kind === "sft") {
    const b = meta.boundaries!;
    if (Array.isArray(b)) offsets = Float64Array.from(b);
    else {
      boundaryPath = join(dirname(metaPath), b.file);
      offsets = readBoundaryFile(boundaryPath, b.count);
    }
    checkBoundaries(offsets, meta.num_tokens, boundaryPath ?? metaPath);
  }
  return {
    kind: opts.kind,
    binPath,
    metaPath,
    boundaryPath,
    meta,
    tokens,
    numTokens: meta.num_tokens,
    offsets,
    numExamples: offsets === null ? 0 : offsets.length - 1,
    maxId: max,
    mapped,
    validationMs: performance.now() - t0,
  };
}

function readBoundaryFile(path: string, count: number): Float64Array {
  if (!existsSync(path)) {
    throw new DataError(`boundary file missing: expected ${count} uint64 offsets (named by the cache meta)`, path);
  }
  const size = cacheFileSize(path);
  if (size !== count * 8) {
    throw new DataError(`size ${size} bytes, expected ${count * 8} (count ${count} uint64 offsets from the meta)`, path);
  }
  const { bytes } = mapFile(path);
  // uint64 little endian read as (low, high) uint32 words: no BigInt per offset
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, count * 2);
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    const hi = words[2 * i + 1];
    if (hi >= 0x200000) throw new DataError(`offset ${i} is beyond 2^53`, path);
    out[i] = hi * 4294967296 + words[2 * i];
  }
  return out;
}

/** Offsets start at 0, increase strictly (no empty example) and end at numTokens. */
function checkBoundaries(o: Float64Array, numTokens: number, file: string): void {
  if (o.length === 0) throw new DataError("no example offsets, expected num_examples + 1 >= 1", file);
  if (o[0] !== 0) throw new DataError(`first example offset is ${o[0]}, expected 0`, file);
  for (let i = 1; i < o.length; i++) {
    if (!(o[i] > o[i - 1])) {
      throw new DataError(`example offsets not strictly increasing: offset ${i} is ${o[i]} after ${o[i - 1]} (example ${i - 1} would be ${o[i] === o[i - 1] ? "empty" : "of negative length"})`, file);
    }
    if (o[i] > numTokens) {
      throw new DataError(`example offset ${i} is ${o[i]}, beyond num_tokens ${numTokens}`, file);
    }
  }
  if (o[o.length - 1] !== numTokens) {
    throw new DataError(`last example offset is ${o[o.length - 1]}, expected num_tokens ${numTokens} (the examples must cover the whole .bin)`, file);
  }
}

/** The id of a special token of an opened cache (DataError if the meta lacks it). */
export function specialId(cache: TokenCache, name: string): number {
  const id = cache.meta.special_tokens[name];
  if (id === undefined) {
    throw new DataError(`special token ${name} missing from "special_tokens"`, cache.metaPath);
  }
  return id;
}

/**
 * Throws unless all caches share the tokenizer name and the ids of the named special
 * tokens: rows of one batch (or a train and a val cache) must mean the same ids.
 */
export function assertSameTokenizer(caches: readonly TokenCache[], specials: readonly string[]): void {
  const [first, ...rest] = caches;
  if (first === undefined) return;
  for (const c of rest) {
    if (c.meta.tokenizer !== first.meta.tokenizer) {
      throw new DataError(`tokenizer "${c.meta.tokenizer}" differs from "${first.meta.tokenizer}" of ${first.metaPath}; caches read together must share one tokenizer`, c.metaPath);
    }
    for (const name of specials) {
      const a = first.meta.special_tokens[name];
      const b = c.meta.special_tokens[name];
      if (a !== b) {
        throw new DataError(`special token ${name} has id ${b}, but ${a} in ${first.metaPath}; caches read together must share special ids`, c.metaPath);
      }
    }
  }
}
