/**
 * Writing the caches of one source from documents or conversations: exact duplicates left
 * out, then the train/val split by a hash of the content (split.ts); used by prepare-data
 * (command.ts) and scripts/demo-data.ts (one writer for both).
 */
import { cachePaths, type CacheKind, type Split } from "../data/paths.ts";
import { DataError } from "../data/errors.ts";
import { assignByHash, contentDigest, type SplitPlan, splitHash } from "./split.ts";
import { encodeConversation, ENDOFTEXT_ID, type Turn } from "../data/tokenizer.ts";
import { CacheWriter } from "./writer.ts";

export interface WrittenCache {
  path: string;
  split: Split;
  tokens: number;
  /** Documents (streams) or examples (SFT). */
  items: number;
}

function splitsOf(plan: SplitPlan): Split[] {
  return plan.mode === "auto" ? ["train", "val"] : [plan.mode];
}

function openWriters(root: string, kind: CacheKind, source: string, plan: SplitPlan, createdBy: string): Map<Split, CacheWriter> {
  const writers = new Map<Split, CacheWriter>();
  for (const split of splitsOf(plan)) {
    writers.set(split, new CacheWriter(cachePaths(root, kind, source, split).bin, { kind, source, split, createdBy }));
  }
  return writers;
}

function closeWriters(writers: Map<Split, CacheWriter>, counts: Map<Split, number>, extra: (split: Split) => Record<string, unknown>): WrittenCache[] {
  const out: WrittenCache[] = [];
  for (const [split, w] of writers) {
    const meta = w.close(extra(split));
    out.push({ path: w.binPath, split, tokens: meta.num_tokens, items: counts.get(split) ?? 0 });
  }
  return out;
}

/** What a builder wrote, and what it left out. */
export interface WriteResult {
  written: WrittenCache[];
  /** Items left out as exact duplicates of an earlier one (same bytes / token ids). */
  duplicates: number;
  /** A tiny input's adjustment of the split (split.ts), or null. */
  moved: string | null;
}

/** One item as the split sees it: the digest of its content, the split hash of its key. */
interface Keyed {
  digest: string;
  hash: bigint;
}

function keyed(content: Uint8Array | Uint16Array, key: Uint8Array | Uint16Array | string, plan: SplitPlan): Keyed {
  return { digest: contentDigest(content), hash: plan.mode === "auto" ? splitHash(key, plan.seed) : 0n };
}

/**
 * Leaves out exact duplicates (first occurrence kept) and assigns the sides by the split
 * hash (split.ts). Returns per item its side, or null for a duplicate.
 */
function dedupAndSplit(items: readonly Keyed[], plan: SplitPlan, what: string): { sides: (Split | null)[]; duplicates: number; moved: string | null } {
  const seen = new Set<string>();
  const kept: number[] = [];
  for (let i = 0; i < items.length; i++) {
    if (seen.has(items[i].digest)) continue;
    seen.add(items[i].digest);
    kept.push(i);
  }
  const { val, moved } = assignByHash(kept.map((i) => items[i].hash), plan, what);
  const sides: (Split | null)[] = new Array(items.length).fill(null);
  kept.forEach((i, k) => (sides[i] = plan.mode === "auto" ? (val[k] ? "val" : "train") : plan.mode));
  return { sides, duplicates: items.length - kept.length, moved };
}

/**
 * Stream caches `<root>/streams/<source>_{train,val}.bin` from documents (UTF-8 bytes), each
 * followed by <|endoftext|>. Exact duplicate documents are left out; each document goes
 * whole to the side its split hash (of its bytes) gives. `documents` is read twice (hashes,
 * then writing), so it returns a fresh iterable on each call.
 */
export function writeStreamCaches(root: string, source: string, documents: () => Iterable<Uint8Array>, plan: SplitPlan, createdBy: string): WriteResult {
  const docs: Keyed[] = [];
  for (const doc of documents()) docs.push(keyed(doc, doc, plan));
  if (docs.length === 0) throw new DataError("no documents (all empty)");
  const { sides, duplicates, moved } = dedupAndSplit(docs, plan, "documents");
  const writers = openWriters(root, "streams", source, plan, createdBy);
  const counts = new Map<Split, number>();
  const sep = [ENDOFTEXT_ID];
  let i = 0;
  try {
    for (const doc of documents()) {
      if (i >= docs.length) throw new Error(`more documents than the ${docs.length} of the first reading`);
      const side = sides[i++];
      if (side === null) continue;
      const w = writers.get(side)!;
      w.append(doc);
      w.append(sep);
      counts.set(side, (counts.get(side) ?? 0) + 1);
    }
    if (i !== docs.length) throw new Error(`${i} documents, ${docs.length} at the first reading`);
  } catch (e) {
    for (const w of writers.values()) w.abort();
    throw e;
  }
  return { written: closeWriters(writers, counts, (split) => ({ num_documents: counts.get(split) ?? 0 })), duplicates, moved };
}

/** One conversation. */
export interface SftItem {
  turns: Turn[];
}

/** writeSftCaches' result: also the examples written, as token ids (for the length table). */
export interface SftWriteResult extends WriteResult {
  examples: Uint16Array[];
}

/**
 * SFT caches `<root>/sft/<source>_{train,val}.bin`, one example per conversation. Exact
 * duplicates (the same token ids) are left out. The side of an example is decided by the
 * split hash of its first turn's text (the prompt: Dolly's instruction and context, the
 * initial prompt of an oasst1 tree), so examples that share a prompt land on the same side:
 * duplicates, several answers to one question, every thread of an oasst1 tree.
 */
export function writeSftCaches(root: string, source: string, items: readonly SftItem[], plan: SplitPlan, createdBy: string): SftWriteResult {
  const encoded = items.map((it) => encodeConversation(it.turns));
  const { sides, duplicates, moved } = dedupAndSplit(encoded.map((e, i) => keyed(e, items[i].turns[0]?.text ?? "", plan)), plan, "examples");
  const writers = openWriters(root, "sft", source, plan, createdBy);
  const counts = new Map<Split, number>();
  try {
    sides.forEach((side, i) => {
      if (side === null) return;
      writers.get(side)!.appendExample(encoded[i]);
      counts.set(side, (counts.get(side) ?? 0) + 1);
    });
  } catch (e) {
    for (const w of writers.values()) w.abort();
    throw e;
  }
  return { written: closeWriters(writers, counts, () => ({})), duplicates, moved, examples: encoded.filter((_, i) => sides[i] !== null) };
}
