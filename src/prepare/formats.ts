/**
 * Instruction data in its published formats, turned into conversations (tokenizer.ts Turn[]).
 *
 * Dolly (databricks-dolly-15k.jsonl): one JSON object per line with string fields
 * `instruction`, `context` (may be empty), `response`, `category`. Example:
 *   <|user|>instruction[\n\ncontext]<|asst|>response<|eot|>
 *
 * OpenAssistant oasst1 (2023-04-12_oasst_*.jsonl[.gz]), both published layouts:
 *   messages file: one message per line (message_id, parent_id, role, text, lang, rank,
 *     deleted, review_result, message_tree_id, ...); roots have parent_id null;
 *   trees file: one tree per line, {message_tree_id, tree_state, prompt: message with
 *     nested `replies`}.
 * Fields used: message_id, parent_id (messages file), role ("prompter" | "assistant"),
 * text, lang (of the initial prompt, for --lang), rank (lower is better), deleted and
 * review_result (a message with deleted true or review_result false is dropped with its
 * replies), message_tree_id (train/val split by tree). Other fields are ignored.
 */
import { readFileSync } from "node:fs";
import { DataError } from "../data/errors.ts";
import type { Turn } from "../data/tokenizer.ts";

/** A problem with one line of an input file. */
export interface LineIssue {
  file: string;
  line: number;
  message: string;
}

export function formatIssue(i: LineIssue): string {
  return `${i.file}:${i.line}: ${i.message}`;
}

/** Non-empty lines of a JSONL text with their 1-based line numbers, parsed. */
function* jsonLines(text: string, file: string, issues: LineIssue[]): Generator<{ line: number; value: Record<string, unknown> }> {
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const s = lines[i].trim();
    if (s.length === 0) continue;
    let value: unknown;
    try {
      value = JSON.parse(s);
    } catch (e) {
      issues.push({ file, line: i + 1, message: `invalid JSON (${(e as Error).message})` });
      continue;
    }
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      issues.push({ file, line: i + 1, message: `expected a JSON object, got ${Array.isArray(value) ? "an array" : JSON.stringify(value)}` });
      continue;
    }
    yield { line: i + 1, value: value as Record<string, unknown> };
  }
}

// ---------------------------------------------------------------- Dolly

export interface DollyRecord {
  instruction: string;
  context: string;
  response: string;
  category: string;
}

export interface Located<T> {
  file: string;
  line: number;
  item: T;
}

/** The records of a Dolly JSONL text; bad lines are reported in `issues` and skipped. */
export function parseDolly(text: string, file: string): { records: Located<DollyRecord>[]; issues: LineIssue[] } {
  const issues: LineIssue[] = [];
  const records: Located<DollyRecord>[] = [];
  for (const { line, value } of jsonLines(text, file, issues)) {
    const r = dollyRecord(value);
    if (typeof r === "string") issues.push({ file, line, message: r });
    else records.push({ file, line, item: r });
  }
  return { records, issues };
}

/** A checked Dolly record, or what is wrong with the object. */
export function dollyRecord(v: Record<string, unknown>): DollyRecord | string {
  const problems: string[] = [];
  const str = (key: string, required: boolean): string => {
    const x = v[key];
    if (typeof x === "string") {
      if (required && x.trim().length === 0) problems.push(`"${key}" is empty`);
      return x.trim();
    }
    if (x === undefined || x === null) {
      if (required) problems.push(`"${key}" is missing, expected a string`);
    } else problems.push(`"${key}" is ${JSON.stringify(x).slice(0, 40)}, expected a string`);
    return "";
  };
  const r = { instruction: str("instruction", true), context: str("context", false), response: str("response", true), category: str("category", false) };
  return problems.length > 0 ? problems.join("; ") : r;
}

/** The conversation of a Dolly record. */
export function dollyTurns(r: DollyRecord): Turn[] {
  const prompt = r.context.length > 0 ? `${r.instruction}\n\n${r.context}` : r.instruction;
  return [
    { role: "user", text: prompt },
    { role: "assistant", text: r.response },
  ];
}

// ---------------------------------------------------------------- oasst1

export interface OasstMessage {
  id: string;
  role: "prompter" | "assistant";
  text: string;
  lang: string | undefined;
  /** Rank among siblings (0 = best); null when unranked. */
  rank: number | null;
  /** Dropped with its replies (deleted, or failed review). */
  dropped: boolean;
  treeId: string;
  file: string;
  line: number;
  /** Position in the input, the tie-break among equally ranked siblings. */
  order: number;
  replies: OasstMessage[];
}

export interface OasstParse {
  /** Initial prompts (tree roots). */
  roots: OasstMessage[];
  issues: LineIssue[];
  /** Messages of the messages layout whose parent is not in the input (skipped). */
  orphans: number;
  layouts: Set<"messages" | "trees">;
}

/** Messages and trees of oasst1 JSONL texts (any mix of the two layouts). */
export function parseOasst(inputs: readonly { text: string; file: string }[]): OasstParse {
  const issues: LineIssue[] = [];
  const roots: OasstMessage[] = [];
  const layouts = new Set<"messages" | "trees">();
  const byId = new Map<string, OasstMessage>();
  const pending: { msg: OasstMessage; parentId: string }[] = [];
  let order = 0;
  for (const { text, file } of inputs) {
    for (const { line, value } of jsonLines(text, file, issues)) {
      if ("prompt" in value) {
        layouts.add("trees");
        const treeId = typeof value.message_tree_id === "string" ? value.message_tree_id : undefined;
        const problems: string[] = [];
        const root = treeMessage(value.prompt, "prompt", treeId, file, line, () => order++, problems);
        if (root !== null && root.role !== "prompter") problems.push(`prompt.role is "assistant", expected "prompter" for an initial prompt`);
        if (problems.length > 0 || root === null) issues.push({ file, line, message: problems.join("; ") });
        else {
          const dup = collectIds(root, byId);
          if (dup !== undefined) issues.push({ file, line, message: `message_id ${dup} appears twice in the input` });
          else roots.push(root);
        }
        continue;
      }
      layouts.add("messages");
      const problems: string[] = [];
      const msg = messageFields(value, "", file, line, order++, problems);
      const parent = value.parent_id;
      if (parent !== null && parent !== undefined && typeof parent !== "string") problems.push(`"parent_id" is ${JSON.stringify(parent)}, expected a string or null`);
      if (msg === null || problems.length > 0) {
        issues.push({ file, line, message: problems.join("; ") });
        continue;
      }
      if (byId.has(msg.id)) {
        issues.push({ file, line, message: `message_id ${msg.id} appears twice in the input` });
        continue;
      }
      byId.set(msg.id, msg);
      if (typeof parent === "string") pending.push({ msg, parentId: parent });
      else if (msg.role !== "prompter") issues.push({ file, line, message: `a message without parent_id (an initial prompt) has role "assistant", expected "prompter"` });
      else {
        if (msg.treeId === "") msg.treeId = msg.id;
        roots.push(msg);
      }
    }
  }
  // link the messages layout: replies in input order
  let orphans = 0;
  for (const { msg, parentId } of pending) {
    const parent = byId.get(parentId);
    if (parent === undefined) {
      orphans++;
      continue;
    }
    if (parent.role === msg.role) {
      issues.push({ file: msg.file, line: msg.line, message: `role "${msg.role}" replies to a "${parent.role}" message (${parentId}); roles must alternate` });
      continue;
    }
    parent.replies.push(msg);
  }
  for (const r of roots) fillTreeIds(r, r.treeId || r.id);
  return { roots, issues, orphans, layouts };
}

function collectIds(m: OasstMessage, byId: Map<string, OasstMessage>): string | undefined {
  if (byId.has(m.id)) return m.id;
  byId.set(m.id, m);
  for (const r of m.replies) {
    const dup = collectIds(r, byId);
    if (dup !== undefined) return dup;
  }
  return undefined;
}

function fillTreeIds(m: OasstMessage, treeId: string): void {
  m.treeId = treeId;
  for (const r of m.replies) fillTreeIds(r, treeId);
}

function messageFields(v: unknown, path: string, file: string, line: number, order: number, problems: string[]): OasstMessage | null {
  const at = (k: string) => (path ? `${path}.${k}` : `"${k}"`);
  if (v === null || typeof v !== "object" || Array.isArray(v)) {
    problems.push(`${path || "message"} is ${JSON.stringify(v)?.slice(0, 40)}, expected a message object`);
    return null;
  }
  const o = v as Record<string, unknown>;
  const n0 = problems.length;
  if (typeof o.message_id !== "string" || o.message_id.length === 0) problems.push(`${at("message_id")} is ${JSON.stringify(o.message_id)}, expected a string`);
  if (o.role !== "prompter" && o.role !== "assistant") problems.push(`${at("role")} is ${JSON.stringify(o.role)}, expected "prompter" or "assistant"`);
  if (typeof o.text !== "string") problems.push(`${at("text")} is ${JSON.stringify(o.text)?.slice(0, 40)}, expected a string`);
  if (o.rank !== undefined && o.rank !== null && typeof o.rank !== "number") problems.push(`${at("rank")} is ${JSON.stringify(o.rank)}, expected a number or null`);
  if (o.lang !== undefined && o.lang !== null && typeof o.lang !== "string") problems.push(`${at("lang")} is ${JSON.stringify(o.lang)}, expected a string`);
  if (problems.length > n0) return null;
  return {
    id: o.message_id as string,
    role: o.role as "prompter" | "assistant",
    text: (o.text as string).trim(),
    lang: typeof o.lang === "string" ? o.lang : undefined,
    rank: typeof o.rank === "number" ? o.rank : null,
    dropped: o.deleted === true || o.review_result === false || (o.text as string).trim().length === 0,
    treeId: typeof o.message_tree_id === "string" ? o.message_tree_id : "",
    file,
    line,
    order,
    replies: [],
  };
}

function treeMessage(v: unknown, path: string, treeId: string | undefined, file: string, line: number, nextOrder: () => number, problems: string[]): OasstMessage | null {
  const msg = messageFields(v, path, file, line, nextOrder(), problems);
  if (msg === null) return null;
  if (treeId !== undefined) msg.treeId = treeId;
  const replies = (v as Record<string, unknown>).replies;
  if (replies === undefined || replies === null) return msg;
  if (!Array.isArray(replies)) {
    problems.push(`${path}.replies is ${JSON.stringify(replies).slice(0, 40)}, expected an array`);
    return null;
  }
  for (let i = 0; i < replies.length; i++) {
    const child = treeMessage(replies[i], `${path}.replies[${i}]`, treeId, file, line, nextOrder, problems);
    if (child === null) continue;
    if (child.role === msg.role) {
      problems.push(`${path}.replies[${i}].role is "${child.role}" replying to "${msg.role}"; roles must alternate`);
      continue;
    }
    msg.replies.push(child);
  }
  return msg;
}

export type OasstPaths = "best" | "all";

export interface OasstConversation {
  treeId: string;
  turns: Turn[];
}

export interface OasstStats {
  trees: number;
  conversations: number;
  /** Trees skipped by the language filter. */
  otherLang: number;
  /** Trees without any kept assistant reply. */
  unanswered: number;
}

/** Kept replies, best first: lowest rank (unranked last), then input order. */
function ranked(m: OasstMessage): OasstMessage[] {
  return m.replies
    .filter((r) => !r.dropped)
    .sort((a, b) => (a.rank ?? Infinity) - (b.rank ?? Infinity) || a.order - b.order);
}

function toTurns(path: readonly OasstMessage[]): Turn[] {
  return path.map((m) => ({ role: m.role === "prompter" ? "user" : "assistant", text: m.text }));
}

/**
 * Conversations of message trees.
 *   best: one per tree, following the best-ranked kept reply at every level;
 *   all:  one per assistant message that ends a thread (no kept assistant reply below it).
 * A thread is cut after its last assistant message; every assistant turn is learnable.
 * `langs`: keep only trees whose initial prompt has one of these languages (empty = all).
 */
export function oasstConversations(roots: readonly OasstMessage[], paths: OasstPaths, langs: readonly string[] = []): { conversations: OasstConversation[]; stats: OasstStats } {
  const conversations: OasstConversation[] = [];
  const stats: OasstStats = { trees: 0, conversations: 0, otherLang: 0, unanswered: 0 };
  for (const root of roots) {
    stats.trees++;
    if (root.dropped) {
      stats.unanswered++;
      continue;
    }
    if (langs.length > 0 && !langs.includes(root.lang ?? "")) {
      stats.otherLang++;
      continue;
    }
    const before = conversations.length;
    if (paths === "best") {
      const path: OasstMessage[] = [root];
      for (let m = root; ; ) {
        const next = ranked(m)[0];
        if (next === undefined) break;
        path.push(next);
        m = next;
      }
      while (path.length > 0 && path[path.length - 1].role !== "assistant") path.pop();
      if (path.length > 0) conversations.push({ treeId: root.treeId, turns: toTurns(path) });
    } else {
      const walk = (m: OasstMessage, path: OasstMessage[]): boolean => {
        // returns whether an assistant message at or below m ends a thread that was emitted
        path.push(m);
        let below = false;
        for (const r of ranked(m)) below = walk(r, path) || below;
        if (m.role === "assistant" && !below) {
          conversations.push({ treeId: root.treeId, turns: toTurns(path) });
          below = true;
        }
        path.pop();
        return below;
      };
      walk(root, []);
    }
    if (conversations.length === before) stats.unanswered++;
  }
  stats.conversations = conversations.length;
  return { conversations, stats };
}

/** Reads a JSONL input file as text (gunzipped when the name ends in .gz). */
export function readJsonlFile(path: string): string {
  const raw = new Uint8Array(readFileSync(path));
  let bytes: Uint8Array = raw;
  if (path.endsWith(".gz")) {
    try {
      bytes = Bun.gunzipSync(raw);
    } catch (e) {
      throw new DataError(`cannot gunzip (${(e as Error).message}); expected a gzip-compressed JSONL file`, path);
    }
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new DataError("not valid UTF-8; expected a UTF-8 JSONL file", path);
  }
}
