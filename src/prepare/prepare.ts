/**
 * Writing the caches of one source from documents or conversations, with the train/val
 * split; used by scripts/prepare-data.ts and scripts/demo-data.ts (one writer for both).
 */
import { cachePaths, type CacheKind, type Split } from "../data/paths.ts";
import { assignVal, type SplitPlan } from "./split.ts";
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

/**
 * Stream caches `<root>/streams/<source>_{train,val}.bin` from `count` documents (UTF-8
 * bytes), each followed by <|endoftext|>. Whole documents go to one split.
 */
export function writeStreamCaches(
  root: string,
  source: string,
  count: number,
  documents: Iterable<Uint8Array>,
  plan: SplitPlan,
  createdBy: string,
): WrittenCache[] {
  const val = assignVal(count, plan, undefined, "documents");
  const writers = openWriters(root, "streams", source, plan, createdBy);
  const counts = new Map<Split, number>();
  const sep = [ENDOFTEXT_ID];
  let i = 0;
  try {
    for (const doc of documents) {
      if (i >= count) throw new Error(`more documents than the ${count} counted`);
      const split: Split = plan.mode === "auto" ? (val[i] ? "val" : "train") : plan.mode;
      const w = writers.get(split)!;
      w.append(doc);
      w.append(sep);
      counts.set(split, (counts.get(split) ?? 0) + 1);
      i++;
    }
    if (i !== count) throw new Error(`${i} documents, ${count} counted`);
  } catch (e) {
    for (const w of writers.values()) w.abort();
    throw e;
  }
  return closeWriters(writers, counts, (split) => ({ num_documents: counts.get(split) ?? 0 }));
}

/** One conversation and the group it is split with (e.g. its oasst1 tree). */
export interface SftItem {
  turns: Turn[];
  /** Items of one group go to the same split; defaults to the item index. */
  group?: string;
}

/**
 * SFT caches `<root>/sft/<source>_{train,val}.bin`, one example per conversation.
 * The split is drawn per group (all conversations of an oasst1 tree stay together).
 */
export function writeSftCaches(root: string, source: string, items: readonly SftItem[], plan: SplitPlan, createdBy: string): WrittenCache[] {
  const groupIndex = new Map<string, number>();
  const groupOf = items.map((it, i) => {
    const key = it.group ?? `#${i}`;
    let g = groupIndex.get(key);
    if (g === undefined) groupIndex.set(key, (g = groupIndex.size));
    return g;
  });
  const val = assignVal(groupIndex.size, plan, undefined, "examples (or groups of examples)");
  const writers = openWriters(root, "sft", source, plan, createdBy);
  const counts = new Map<Split, number>();
  try {
    items.forEach((it, i) => {
      const split: Split = plan.mode === "auto" ? (val[groupOf[i]] ? "val" : "train") : plan.mode;
      writers.get(split)!.appendExample(encodeConversation(it.turns));
      counts.set(split, (counts.get(split) ?? 0) + 1);
    });
  } catch (e) {
    for (const w of writers.values()) w.abort();
    throw e;
  }
  return closeWriters(writers, counts, () => ({}));
}
