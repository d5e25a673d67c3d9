import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mixtureOf } from "../src/data/paths.ts";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { untagDocument, untagSentence } from "../src/prepare/brown.ts";
import { openCache } from "../src/data/cache.ts";
import { dollyTurns, formatIssue, oasstConversations, parseDolly, parseOasst, readJsonlFile } from "../src/prepare/formats.ts";
import { SFTExampleDataset } from "../src/data/sft.ts";
import { assignByHash, splitHash } from "../src/prepare/split.ts";
import { StreamDataset } from "../src/data/stream.ts";
import { Rng } from "../src/util/random.ts";
import { checkAnswer, makeTask, TASK_KINDS } from "../src/prepare/tasks.ts";
import { fileDocuments } from "../src/prepare/text.ts";
import { decodeTokens, encodeConversation, ENDOFTEXT_ID } from "../src/data/tokenizer.ts";
import { tempRoot } from "./fixtures/data/helpers.ts";

const FIX = join(import.meta.dir, "fixtures", "data");
const BUN = process.execPath;
let root: string;
let cleanup: () => void;
beforeAll(() => ({ root, cleanup } = tempRoot()));
afterAll(() => cleanup());

function run(script: string, args: string[]): { code: number; stdout: string; stderr: string } {
  const p = Bun.spawnSync([BUN, join(import.meta.dir, "..", "scripts", script), ...args], { stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode ?? -1, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

/** Nothing on stderr but, for these tiny inputs, the note that the hash split left one side empty. */
function onlyTinySplitWarning(stderr: string): boolean {
  return /^(warning: the hash put all \d+ examples into (train|val); moved \d+ [^\n]*\n)?$/.test(stderr);
}

function examples(bin: string): string[] {
  const c = openCache(bin, { kind: "sft", modelV: 264 });
  return Array.from({ length: c.numExamples }, (_, i) => decodeTokens(c.tokens.subarray(c.offsets![i], c.offsets![i + 1])));
}

describe("Dolly", () => {
  test("records of the fixture become <|user|>instruction[\\n\\ncontext]<|asst|>response<|eot|>", () => {
    const { records, issues } = parseDolly(readFileSync(join(FIX, "dolly.jsonl"), "utf8"), "dolly.jsonl");
    expect(issues).toEqual([]);
    expect(records.length).toBe(5);
    expect(decodeTokens(encodeConversation(dollyTurns(records[0].item)))).toBe("<|user|>What is the capital of France?<|asst|>The capital of France is Paris.<|eot|>");
    expect(decodeTokens(encodeConversation(dollyTurns(records[1].item)))).toStartWith("<|user|>Summarize the paragraph in one sentence.\n\nBun is a JavaScript runtime.");
    expect(decodeTokens(encodeConversation(dollyTurns(records[4].item)))).toContain("Danke schön.<|eot|>"); // UTF-8 bytes round trip
  });

  test("bad lines are reported as file:line with what is wrong", () => {
    const { records, issues } = parseDolly(readFileSync(join(FIX, "dolly-bad.jsonl"), "utf8"), "dolly-bad.jsonl");
    expect(records.map((r) => r.line)).toEqual([1, 7]);
    const lines = issues.map(formatIssue);
    expect(lines[0]).toStartWith("dolly-bad.jsonl:2: invalid JSON");
    expect(lines[1]).toBe('dolly-bad.jsonl:3: "instruction" is empty');
    expect(lines[2]).toBe('dolly-bad.jsonl:4: "response" is missing, expected a string');
    expect(lines[3]).toBe("dolly-bad.jsonl:5: expected a JSON object, got an array");
    expect(lines[4]).toBe('dolly-bad.jsonl:6: "context" is 7, expected a string');
    expect(lines.length).toBe(5);
  });

  test("CLI: caches that open and validate; bad lines stop it with exit 2 unless --skip-bad", () => {
    const out = join(root, "dolly-cli");
    const ok = run("prepare-data.ts", ["dolly", join(FIX, "dolly.jsonl"), "--source", "dolly", "--out", out, "--val-fraction", "0.2"]);
    expect(onlyTinySplitWarning(ok.stderr)).toBe(true);
    expect(ok.code).toBe(0);
    const train = examples(join(out, "sft", "dolly_train.bin"));
    const val = examples(join(out, "sft", "dolly_val.bin"));
    expect(train.length + val.length).toBe(5); // how many go to val: the hash decides (tests/sft-real-data.test.ts)
    expect(val.length).toBeGreaterThan(0);
    expect([...train, ...val].sort()).toContain("<|user|>Name three primary colors.<|asst|>Red, yellow and blue.<|eot|>");

    const bad = run("prepare-data.ts", ["dolly", join(FIX, "dolly-bad.jsonl"), "--out", join(root, "bad")]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("5 bad input line(s)");
    expect(bad.stderr).toContain(`${join(FIX, "dolly-bad.jsonl")}:4: "response" is missing`);
    expect(bad.stderr).not.toContain("    at "); // no stack trace

    const skip = run("prepare-data.ts", ["dolly", join(FIX, "dolly-bad.jsonl"), "--out", join(root, "skip"), "--skip-bad", "--split", "train"]);
    expect(skip.code).toBe(0);
    expect(examples(join(root, "skip", "sft", "dolly_train.bin")).length).toBe(2);
  });
});

describe("oasst1", () => {
  const flat = () => parseOasst([{ file: "m.jsonl", text: readFileSync(join(FIX, "oasst1-messages.jsonl"), "utf8") }]);
  const trees = () => parseOasst([{ file: "t.jsonl", text: readFileSync(join(FIX, "oasst1-trees.jsonl"), "utf8") }]);
  const texts = (p: ReturnType<typeof flat>, paths: "best" | "all", langs: string[] = []) =>
    oasstConversations(p.roots, paths, langs).conversations.map((c) => decodeTokens(encodeConversation(c.turns)));

  test("messages and trees layouts give the same conversations", () => {
    const f = flat();
    const t = trees();
    expect(f.issues).toEqual([]);
    expect(t.issues).toEqual([]);
    expect([...f.layouts]).toEqual(["messages"]);
    expect([...t.layouts]).toEqual(["trees"]);
    expect(texts(f, "best")).toEqual(texts(t, "best"));
    expect(texts(f, "all")).toEqual(texts(t, "all"));
  });

  test("best: the best-ranked thread of each tree; dropped messages left out", () => {
    expect(texts(flat(), "best")).toEqual([
      "<|user|>How do I boil an egg?<|asst|>Place the egg in boiling water for nine minutes, then cool it in cold water.<|eot|><|user|>And for a soft yolk?<|asst|>Six minutes is enough for a soft yolk.<|eot|>",
      "<|user|>Was ist die Hauptstadt von Italien?<|asst|>Die Hauptstadt von Italien ist Rom.<|eot|>",
    ]);
    const { stats } = oasstConversations(flat().roots, "best");
    expect(stats).toEqual({ trees: 3, conversations: 2, otherLang: 0, unanswered: 1 });
  });

  test("all: every thread ending in an assistant message; --lang filters by the prompt", () => {
    const all = texts(flat(), "all", ["en"]);
    expect(all).toEqual([
      "<|user|>How do I boil an egg?<|asst|>Place the egg in boiling water for nine minutes, then cool it in cold water.<|eot|><|user|>And for a soft yolk?<|asst|>Six minutes is enough for a soft yolk.<|eot|>",
      "<|user|>How do I boil an egg?<|asst|>Put it in a pot and hope.<|eot|>",
    ]);
    expect(all.join()).not.toContain("Spam"); // deleted
    expect(all.join()).not.toContain("secret"); // answer failed review
  });

  test("bad lines: file:line and the field", () => {
    const text = [
      JSON.stringify({ message_id: "a", parent_id: null, role: "prompter", text: "hi", lang: "en" }),
      JSON.stringify({ message_id: "b", parent_id: "a", role: "prompter", text: "again" }),
      JSON.stringify({ message_id: "c", parent_id: "a", role: "bot", text: "x" }),
      JSON.stringify({ message_id: "d", parent_id: "zzz", role: "assistant", text: "orphan" }),
      "",
      JSON.stringify({ message_tree_id: "t", prompt: { message_id: "p", role: "prompter", text: "q", replies: [{ message_id: "r", role: "assistant" }] } }),
      "{oops",
    ].join("\n");
    const p = parseOasst([{ file: "x.jsonl", text }]);
    expect(p.issues.map(formatIssue)).toEqual([
      'x.jsonl:3: "role" is "bot", expected "prompter" or "assistant"',
      "x.jsonl:6: prompt.replies[0].text is undefined, expected a string",
      expect.stringMatching(/^x\.jsonl:7: invalid JSON/),
      'x.jsonl:2: role "prompter" replies to a "prompter" message (a); roles must alternate',
    ]);
    expect(p.orphans).toBe(1);
  });

  test("CLI on the gzipped trees file, split by tree", () => {
    const gz = join(root, "oasst.trees.jsonl.gz");
    writeFileSync(gz, Bun.gzipSync(readFileSync(join(FIX, "oasst1-trees.jsonl"))));
    expect(readJsonlFile(gz)).toBe(readFileSync(join(FIX, "oasst1-trees.jsonl"), "utf8"));
    const out = join(root, "oasst-cli");
    const r = run("prepare-data.ts", ["oasst1", gz, "--out", out, "--paths", "all", "--val-fraction", "0.4"]);
    expect(onlyTinySplitWarning(r.stderr)).toBe(true);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("3 trees (trees layout): 3 conversations");
    const train = examples(join(out, "sft", "oasst1_train.bin"));
    const val = examples(join(out, "sft", "oasst1_val.bin"));
    // the two threads of the egg tree stay in one split
    const eggs = (xs: string[]) => xs.filter((x) => x.includes("egg")).length;
    expect([eggs(train), eggs(val)].sort()).toEqual([0, 2]);
    expect(train.length + val.length).toBe(3);
  });
});

describe("plain text", () => {
  test("documents per file, line, blank-line; BOM and CRLF normalized", () => {
    const dir = join(root, "text");
    mkdirSync(dir, { recursive: true });
    const a = join(dir, "a.txt");
    writeFileSync(a, "\uFEFFFirst line\r\nsecond line\r\n\r\n  \r\nThird para\n");
    const docs = (mode: "file" | "line" | "blank-line") => [...fileDocuments(a, mode)].map((d) => new TextDecoder().decode(d));
    expect(docs("file")).toEqual(["First line\nsecond line\n\n  \nThird para\n"]);
    expect(docs("line")).toEqual(["First line", "second line", "Third para"]);
    expect(docs("blank-line")).toEqual(["First line\nsecond line", "Third para"]);
  });

  test("CLI: stream caches of whole documents, each followed by <|endoftext|>", () => {
    const dir = join(root, "text-cli");
    mkdirSync(dir, { recursive: true });
    const files = Array.from({ length: 10 }, (_, i) => {
      const f = join(dir, `doc${i}.txt`);
      writeFileSync(f, `Document number ${i}. `.repeat(5));
      return f;
    });
    const out = join(dir, "cache");
    const r = run("prepare-data.ts", ["text", "--source", "roam", "--out", out, "--val-fraction", "0.2", ...files]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const train = openCache(join(out, "streams", "roam_train.bin"), { kind: "streams", modelV: 261 });
    const val = openCache(join(out, "streams", "roam_val.bin"), { kind: "streams", modelV: 261 });
    expect((train.meta.num_documents as number) + (val.meta.num_documents as number)).toBe(10);
    expect(val.meta.num_documents).toBeGreaterThan(0);
    const all = decodeTokens(train.tokens) + decodeTokens(val.tokens);
    for (let i = 0; i < 10; i++) expect(all).toContain(`${`Document number ${i}. `.repeat(5)}<|endoftext|>`);
    expect(train.tokens[train.numTokens - 1]).toBe(ENDOFTEXT_ID);

    const wrong = run("prepare-data.ts", ["text", "--source", "dolly", "--out", out, files[0]]);
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toContain("--source dolly: expected one of wiki, roam, primer");
    const one = run("prepare-data.ts", ["text", "--source", "wiki", "--out", out, files[0]]);
    expect(one.code).toBe(2);
    expect(one.stderr).toContain("1 documents: at least 2 are needed");
    const none = run("prepare-data.ts", ["text", "--source", "wiki", "--out", out, join(dir, "nope.txt")]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain("not found");
  });

  test("train/val assignment by hash: about the fraction, per item, seed-dependent; one split by --split", () => {
    const plan = { mode: "auto" as const, valFraction: 0.1, seed: 3 };
    const hashes = Array.from({ length: 1000 }, (_, i) => splitHash(`document ${i}`, plan.seed));
    const a = assignByHash(hashes, plan).val;
    const nVal = a.reduce((s, v) => s + v, 0);
    expect(nVal).toBeGreaterThan(70); // binomial(1000, 0.1): 100 +- 9.5
    expect(nVal).toBeLessThan(130);
    // an item's side depends on its own hash only: the first 500 alone get the same sides
    expect(assignByHash(hashes.slice(0, 500), plan).val).toEqual(a.subarray(0, 500));
    const other = Array.from({ length: 1000 }, (_, i) => splitHash(`document ${i}`, 4));
    expect(assignByHash(other, { ...plan, seed: 4 }).val).not.toEqual(a);
    // a tiny input the hash puts on one side: the nearest item is moved, and that is said
    const three = [splitHash("a", 0), splitHash("b", 0), splitHash("c", 0)];
    const tiny = assignByHash(three, { ...plan, valFraction: 0.001 });
    expect(tiny.val.reduce((s, v) => s + v, 0)).toBe(1);
    expect(tiny.moved).toContain("moved 1 (the smallest hash) to val");
    expect(() => assignByHash([three[0]!, three[0]!], plan)).toThrow("all 2 items have the same split key");
    expect(Array.from(assignByHash(three, { ...plan, mode: "val" }).val)).toEqual([1, 1, 1]);
  });
});

describe("demo data", () => {
  test("Brown tags stripped into readable English", () => {
    expect(untagSentence("The/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, he/pps noted/vbd ./.").text).toBe('The jury said "no evidence", he noted.');
    expect(untagSentence("Mayor-nominate/nn-tl Ivan/np Allen/np Jr./np ./.").text).toBe("Mayor-nominate Ivan Allen Jr.");
    expect(untagSentence("a/at 1-1/2/cd inch/nn (/( or/cc so/rb )/) ./.").text).toBe("a 1-1/2 inch (or so).");
    const doc = untagDocument("\n\n\tFirst/od sentence/nn ./.\nSecond/od one/pn ./.\n\n\n\tNew/jj para/nn ./.\n\nHead/nn-hl line/nn-hl\n");
    expect(doc).toBe("First sentence. Second one.\nNew para.\nHead line");
  });

  test("tasks: answers are right and checkable, deterministic per seed", () => {
    const rng = new Rng(1, 0, 1);
    const words = ["banana", "apple", "cherry"];
    for (let i = 0; i < 300; i++) {
      const kind = TASK_KINDS[i % TASK_KINDS.length];
      const t = makeTask(rng, words, kind);
      const nums = (t.instruction.match(/\d+/g) ?? []).map(Number);
      const word = /"([a-z]+)"\.?\??$/.exec(t.instruction)?.[1] ?? "";
      const expected: Record<string, () => string> = {
        add: () => String(nums[0] + nums[1]),
        sub: () => String(nums[0] - nums[1]),
        mul: () => String(nums[0] * nums[1]),
        max: () => String(Math.max(nums[0], nums[1])),
        reverse: () => [...word].reverse().join(""),
        upper: () => t.answer === word.toUpperCase() ? t.answer : "?",
        count: () => t.answer,
        length: () => String(word.length),
        first: () => word[0],
        last: () => word[word.length - 1],
        next: () => String.fromCharCode(t.instruction.match(/"([a-z])"/)![1].charCodeAt(0) + 1),
        prev: () => String.fromCharCode(t.instruction.match(/"([a-z])"/)![1].charCodeAt(0) - 1),
      };
      if (kind !== "upper" && kind !== "count") expect(t.answer).toBe(expected[kind]());
      expect(checkAnswer(t, ` ${t.answer}.`)).toBe(true);
      expect(checkAnswer(t, `${t.answer}0`)).toBe(false);
    }
    const a = makeTask(new Rng(5, 0, 1), words);
    expect(makeTask(new Rng(5, 0, 1), words)).toEqual(a);
  });

  test("demo-data writes all twelve caches, usable by the datasets of a small model", () => {
    const out = join(root, "demo");
    const r = run("demo-data.ts", ["--out", out, "--examples", "300"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const opts = { B: 8, T: 64, seed: 42, modelV: 264 };
    const streams = StreamDataset.open(out, mixtureOf({ wiki: 0.784, roam: 0.196, primer: 0.02 }, "streams"), "train", opts);
    expect(decodeTokens(streams.getBatch(0).x)).toMatch(/ the /);
    for (const split of ["train", "val"] as const) {
      const sft = SFTExampleDataset.open(out, mixtureOf({ dolly: 1, oasst1: 1, primer: 1 }, "sft"), split, opts);
      expect(sft.getBatch(0).nTargets).toBeGreaterThan(0);
    }
    const refuse = run("demo-data.ts", ["--out", "data/cache"]);
    expect(refuse.code).toBe(2);
    expect(refuse.stderr).toContain("the place of the real caches");
  });
});
