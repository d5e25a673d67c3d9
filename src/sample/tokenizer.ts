/**
 * The tokenizer of a checkpoint: the one its caches were built with, as their metadata
 * records it (docs/cache-format.md: `tokenizer` and `special_tokens` of a .meta.json).
 * Found in the run folder of the checkpoint (data/cache/**.meta.json of the folder that
 * holds checkpoints/), or named by --tokenizer. Only the byte-level tokenizer of
 * src/data/tokenizer.ts is known; anything else means "no tokenizer" (token ids).
 */
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { DEFAULT_CACHE_ROOT } from "../data/paths.ts";
import { decodeTokens, TOKENIZER_NAME } from "../data/tokenizer.ts";
import { InputError } from "../errors.ts";

export interface Tokenizer {
  source: string; // the meta.json it came from
  specials: { user: number; asst: number; eot: number; endoftext: number };
  encode(text: string): Uint8Array;
  /** Text of ids as they come (UTF-8 split across tokens held back until whole). */
  streamDecoder(): { push(id: number): string; flush(): string };
}

function metaFiles(dir: string, depth = 0): string[] {
  if (depth > 4 || !existsSync(dir)) return [];
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...metaFiles(p, depth + 1));
    else if (e.name.endsWith(".meta.json")) out.push(p);
  }
  return out;
}

/** The run folder's cache metas: data/cache under the checkpoint's folder or up to three above. */
function runFolderMetas(checkpoint: string): string[] {
  let dir = dirname(resolve(checkpoint));
  for (let i = 0; i < 4; i++) {
    const metas = metaFiles(join(dir, DEFAULT_CACHE_ROOT));
    if (metas.length > 0) return metas;
    dir = dirname(dir);
  }
  return [];
}

function fromMeta(path: string, V: number, named: boolean): Tokenizer | null {
  let meta: { tokenizer?: unknown; special_tokens?: Record<string, unknown> };
  try {
    meta = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    if (!named) return null;
    throw new InputError(`--tokenizer ${path}: cannot read it as JSON (${(e as Error).message}): expected a cache .meta.json`);
  }
  if (meta.tokenizer !== TOKENIZER_NAME) {
    if (named) throw new InputError(`--tokenizer ${path}: tokenizer "${String(meta.tokenizer)}" is unknown: expected "${TOKENIZER_NAME}"`);
    return null;
  }
  const sp = meta.special_tokens ?? {};
  const id = (name: string) => {
    const v = sp[name];
    if (typeof v !== "number" || !Number.isInteger(v) || v < 256 || v >= V) {
      throw new InputError(`${path}: special token ${name} = ${JSON.stringify(v)}: expected an id in [256, V=${V}) of the checkpoint's model`);
    }
    return v;
  };
  const specials = { user: id("<|user|>"), asst: id("<|asst|>"), eot: id("<|eot|>"), endoftext: id("<|endoftext|>") };
  const names = new Map(Object.entries(sp).map(([k, v]) => [v as number, k]));
  const encoder = new TextEncoder();
  return {
    source: path,
    specials,
    encode: (text) => encoder.encode(text),
    streamDecoder() {
      const dec = new TextDecoder("utf-8");
      return {
        push: (tid) => (tid < 256 ? dec.decode(Uint8Array.of(tid), { stream: true }) : dec.decode() + (names.get(tid) ?? decodeTokens([tid]))),
        flush: () => dec.decode(),
      };
    },
  };
}

/** The tokenizer named by --tokenizer, else the run folder's; null when none is known. */
export function findTokenizer(checkpoint: string, flag: string | null, V: number): Tokenizer | null {
  if (flag !== null) {
    if (!existsSync(flag) || statSync(flag).isDirectory()) throw new InputError(`--tokenizer ${flag}: no such file (expected a cache .meta.json)`);
    return fromMeta(flag, V, true);
  }
  for (const meta of runFolderMetas(checkpoint)) {
    const tok = fromMeta(meta, V, false);
    if (tok !== null) return tok;
  }
  return null;
}
