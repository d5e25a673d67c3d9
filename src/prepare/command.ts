/**
 * `train prepare-data`: builds token caches (docs/cache-format.md) from raw data.
 *   train prepare-data text   --source wiki  --out data/cache [--docs file|line|blank-line] FILES...
 *   train prepare-data dolly  --source dolly --out data/cache databricks-dolly-15k.jsonl
 *   train prepare-data oasst1 --source oasst1 --out data/cache 2023-04-12_oasst_ready.trees.jsonl.gz
 * Common: --val-fraction 0.05, --split auto|train|val, --seed N (of the split). Exact
 * duplicates are left out (and counted); the split is by a hash of the content (split.ts),
 * SFT examples by their prompt, so an oasst1 tree stays on one side. dolly and oasst1 print
 * a length table against model T values (--context-lengths, --long-examples). Bad input lines are listed as file:line and stop the run
 * (exit 2) unless --skip-bad. A DataError reaches the CLI (src/cli.ts), which prints it
 * and exits 2.
 */
import { defineCommand } from "citty";
import { existsSync, statSync } from "node:fs";
import { DataError } from "../data/errors.ts";
import { DEFAULT_CACHE_ROOT, SFT_SOURCES, STREAM_SOURCES } from "../data/paths.ts";
import { dollyTurns, formatIssue, type LineIssue, oasstConversations, type OasstPaths, parseDolly, parseOasst, readJsonlFile } from "./formats.ts";
import { DEFAULT_TABLE_T, lengthTable, parseTs } from "./lengths.ts";
import { type SftItem, type SftWriteResult, type WriteResult, writeSftCaches, writeStreamCaches } from "./prepare.ts";
import { LONG_EXAMPLE_RULES, type LongExampleRule } from "../data/long-examples.ts";
import type { SplitPlan } from "./split.ts";
import { DOC_MODES, type DocMode, fileDocuments } from "./text.ts";

const MAX_LISTED = 20;

const common = {
  files: { type: "positional" as const, description: "input files", required: false },
  out: { type: "string" as const, description: "cache root", default: DEFAULT_CACHE_ROOT },
  "val-fraction": { type: "string" as const, description: "fraction of documents/examples in the val split (--split auto)", default: "0.05" },
  split: { type: "enum" as const, options: ["auto", "train", "val"], description: "auto: both splits by --val-fraction; train|val: all input into that split", default: "auto" },
  seed: { type: "string" as const, description: "seed of the train/val assignment", default: "0" },
};

function plan(args: { "val-fraction": string; split: string; seed: string }): SplitPlan {
  const valFraction = Number(args["val-fraction"]);
  const seed = Number(args.seed);
  if (args.split === "auto" && !(valFraction > 0 && valFraction < 1)) {
    throw new DataError(`--val-fraction ${args["val-fraction"]}: expected a number in (0, 1)`);
  }
  if (!Number.isSafeInteger(seed)) throw new DataError(`--seed ${args.seed}: expected an integer`);
  return { mode: args.split as SplitPlan["mode"], valFraction, seed };
}

function inputFiles(files: string[], what: string): string[] {
  if (files.length === 0) throw new DataError(`no input files: expected ${what}`);
  const missing = files.filter((f) => !existsSync(f) || !statSync(f).isFile());
  if (missing.length > 0) throw new DataError(`input file(s) not found: ${missing.join(", ")}`);
  return files;
}

function checkSource(source: string | undefined, allowed: readonly string[], kind: string): string {
  if (source === undefined || !allowed.includes(source)) {
    throw new DataError(`--source ${source ?? "(missing)"}: expected one of ${allowed.join(", ")} (${kind} caches)`);
  }
  return source;
}

/** Lists bad lines; fatal unless skipping was asked for. */
function reportIssues(issues: readonly LineIssue[], skip: boolean): void {
  if (issues.length === 0) return;
  const listed = issues.slice(0, MAX_LISTED).map((i) => `  ${formatIssue(i)}`);
  if (issues.length > MAX_LISTED) listed.push(`  ... and ${issues.length - MAX_LISTED} more`);
  if (!skip) throw new DataError(`${issues.length} bad input line(s):\n${listed.join("\n")}\n(fix them, or pass --skip-bad to leave them out)`);
  console.warn(`warning: skipped ${issues.length} bad input line(s):\n${listed.join("\n")}`);
}

function report(r: WriteResult, t0: number, unit: string, more: readonly string[] = []): void {
  const total = r.written.reduce((a, w) => a + w.items, 0) + r.duplicates;
  console.log(`${r.duplicates} of ${total} ${unit} left out as exact duplicates of an earlier one (before the split)`);
  if (r.moved !== null) console.warn(`warning: ${r.moved}`);
  for (const w of r.written) console.log(`${w.path}: ${w.tokens} tokens, ${w.items} ${unit} (${w.split})`);
  for (const line of more) console.log(line);
  console.log(`done in ${((performance.now() - t0) / 1000).toFixed(2)} s`);
}

const lengthArgs = {
  "context-lengths": { type: "string" as const, description: `model T values to compare the example lengths with, comma-separated (default ${DEFAULT_TABLE_T.join(",")})` },
  "long-examples": { type: "enum" as const, options: [...LONG_EXAMPLE_RULES], description: "the long_examples rule of the table (as in the sft config)", default: "head" },
};

/** Checks the length-table flags before any work. */
function tableOptions(args: { "context-lengths"?: string; "long-examples"?: string }): { ts: readonly number[]; rule: LongExampleRule } {
  const ts = args["context-lengths"] === undefined ? DEFAULT_TABLE_T : parseTs(args["context-lengths"]);
  if (typeof ts === "string") throw new DataError(ts);
  return { ts, rule: (args["long-examples"] ?? "head") as LongExampleRule };
}

function reportSft(r: SftWriteResult, t0: number, table: { ts: readonly number[]; rule: LongExampleRule }): void {
  report(r, t0, "examples", lengthTable(r.examples, table.ts, table.rule));
}

const text = defineCommand({
  meta: { name: "text", description: "plain text files -> stream caches <out>/streams/<source>_{train,val}.bin" },
  args: {
    source: { type: "string", description: `one of ${STREAM_SOURCES.join(", ")} (required)` },
    docs: { type: "enum", options: [...DOC_MODES], description: "what a document is: a file, a line, or a blank-line separated block", default: "file" },
    ...common,
  },
  run: ({ args }) => {
    const t0 = performance.now();
    const source = checkSource(args.source, STREAM_SOURCES, "stream");
    const files = inputFiles(args._, "plain text files (UTF-8)");
    const mode = args.docs as DocMode;
    const p = plan(args);
    const docs = function* () {
      for (const f of files) yield* fileDocuments(f, mode);
    };
    if (docs().next().done) throw new DataError(`no documents in ${files.join(", ")} (all empty)`);
    report(writeStreamCaches(args.out, source, docs, p, `prepare-data text --docs ${mode}`), t0, "documents");
  },
});

const skipBad = { type: "boolean", description: "leave bad lines out (listed as warnings) instead of stopping", default: false } as const;

const dolly = defineCommand({
  meta: { name: "dolly", description: "Dolly JSONL (instruction, context, response, category) -> SFT caches" },
  args: {
    source: { type: "string", description: `one of ${SFT_SOURCES.join(", ")}`, default: "dolly" },
    "skip-bad": skipBad,
    ...lengthArgs,
    ...common,
  },
  run: ({ args }) => {
    const t0 = performance.now();
    const source = checkSource(args.source, SFT_SOURCES, "SFT");
    const files = inputFiles(args._, "Dolly JSONL files");
    const p = plan(args);
    const table = tableOptions(args);
    const items: SftItem[] = [];
    const issues: LineIssue[] = [];
    for (const f of files) {
      const parsed = parseDolly(readJsonlFile(f), f);
      issues.push(...parsed.issues);
      for (const r of parsed.records) items.push({ turns: dollyTurns(r.item) });
    }
    reportIssues(issues, args["skip-bad"]);
    if (items.length === 0) throw new DataError(`no examples in ${files.join(", ")}`);
    reportSft(writeSftCaches(args.out, source, items, p, "prepare-data dolly"), t0, table);
  },
});

const oasst1 = defineCommand({
  meta: { name: "oasst1", description: "oasst1 JSONL[.gz] (messages or trees layout) -> SFT caches" },
  args: {
    source: { type: "string", description: `one of ${SFT_SOURCES.join(", ")}`, default: "oasst1" },
    paths: { type: "enum", options: ["best", "all"], description: "best: the best-ranked thread of each tree; all: every thread", default: "best" },
    lang: { type: "string", description: "comma-separated languages of the initial prompt to keep (e.g. en); empty = all", default: "" },
    "skip-bad": skipBad,
    ...lengthArgs,
    ...common,
  },
  run: ({ args }) => {
    const t0 = performance.now();
    const source = checkSource(args.source, SFT_SOURCES, "SFT");
    const files = inputFiles(args._, "oasst1 JSONL files (.jsonl or .jsonl.gz)");
    const p = plan(args);
    const table = tableOptions(args);
    const parsed = parseOasst(files.map((f) => ({ file: f, text: readJsonlFile(f) })));
    reportIssues(parsed.issues, args["skip-bad"]);
    if (parsed.orphans > 0) console.warn(`warning: ${parsed.orphans} message(s) reply to a message not in the input (left out with their replies)`);
    const langs = args.lang.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
    const { conversations, stats } = oasstConversations(parsed.roots, args.paths as OasstPaths, langs);
    console.log(`${stats.trees} trees (${[...parsed.layouts].join(" + ")} layout): ${stats.conversations} conversations, ${stats.otherLang} trees of other languages, ${stats.unanswered} without a kept answer`);
    if (conversations.length === 0) throw new DataError(`no conversation with an assistant answer in ${files.join(", ")}`);
    const items = conversations.map((c) => ({ turns: c.turns }));
    reportSft(writeSftCaches(args.out, source, items, p, `prepare-data oasst1 --paths ${args.paths}`), t0, table);
  },
});

export const prepareDataCommand = defineCommand({
  meta: { name: "prepare-data", description: "build token caches for train (format: docs/cache-format.md)" },
  subCommands: { text, dolly, oasst1 },
});
