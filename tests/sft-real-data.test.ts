/**
 * Real-shaped instruction data (issue 23), on hand-written records in Dolly's and oasst1's
 * published layouts (tests/fixtures/data/dolly-real.jsonl, oasst1-real.jsonl: long contexts,
 * exact duplicates, a question asked twice with different answers, an oasst1 question asked
 * in two trees, Japanese, German, Spanish and an emoji):
 *  - prepare-data leaves exact duplicates out before the split and says how many; the split
 *    follows a documented hash of the prompt, so no prompt is on both sides, and a record
 *    keeps its side when the input is given twice, reordered or grown;
 *  - an SFT run prints per source the examples kept whole / cut / skipped at its T and the
 *    share of response tokens counted, and warns when more than 10 % are skipped;
 *  - long_examples "cut_prompt" and "drop" draw the rows the documentation describes, and
 *    the counted targets are those of those rows; progress, summary and metrics.jsonl count
 *    target tokens.
 * Expected numbers come from a naive reading of docs/cache-format.md written here, not from
 * the code under test.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { openCache } from "../src/data/cache.ts";
import { mixtureOf } from "../src/data/paths.ts";
import { SFTExampleDataset } from "../src/data/sft.ts";
import { ASST_ID, decodeTokens, EOT_ID, PAD_ID } from "../src/data/tokenizer.ts";
import { exitCodeOf } from "../src/errors.ts";
import { readMetrics } from "../src/train/metrics.ts";
import { TrainStats } from "../src/train/stats.ts";
import { runTraining } from "../src/train/run.ts";
import { tempRoot } from "./fixtures/data/helpers.ts";
import { captureStream } from "./helpers/repo.ts";

const FIX = join(import.meta.dir, "fixtures", "data");
const DOLLY = join(FIX, "dolly-real.jsonl");
const OASST = join(FIX, "oasst1-real.jsonl");
const PREPARE = join(import.meta.dir, "..", "scripts", "prepare-data.ts");
let root: string;
let cleanup: () => void;
beforeAll(() => ({ root, cleanup } = tempRoot()));
afterAll(() => cleanup());

function prepare(args: string[]): { code: number; stdout: string; stderr: string } {
  const p = Bun.spawnSync([process.execPath, PREPARE, ...args], { stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode ?? -1, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

/** The examples of an SFT cache as token arrays. */
function examplesOf(bin: string): number[][] {
  const c = openCache(bin, { kind: "sft", modelV: 264 });
  return Array.from({ length: c.numExamples }, (_, i) => Array.from(c.tokens.subarray(c.offsets![i], c.offsets![i + 1])));
}

const text = (ids: readonly number[]) => decodeTokens(ids);
/** The first user turn of an example (between <|user|> and <|asst|>). */
const promptOf = (ids: readonly number[]) => text(ids.slice(1, ids.indexOf(ASST_ID)));

function sides(out: string, source = "dolly"): { train: string[]; val: string[] } {
  return {
    train: examplesOf(join(out, "sft", `${source}_train.bin`)).map(text),
    val: examplesOf(join(out, "sft", `${source}_val.bin`)).map(text),
  };
}

/** docs/cache-format.md: val iff the first 8 bytes of SHA-256("train-split-v1:<seed>:" + prompt) < floor(f * 2^64). */
function documentedSide(prompt: string, seed: number, f: number): "train" | "val" {
  const h = createHash("sha256").update(`train-split-v1:${seed}:${prompt}`).digest();
  return h.readBigUInt64BE(0) < BigInt(Math.floor(f * 2 ** 64)) ? "val" : "train";
}

// ------------------------------------------------------------------ naive reference

type Rule = "head" | "cut_prompt" | "drop";

/** The row (T+1 tokens at most) a rule takes from an example, or null when it is skipped. */
function naiveRow(ex: readonly number[], T: number, rule: Rule): number[] | null {
  const n = ex.length;
  const p = ex.indexOf(ASST_ID);
  let start = 0;
  if (n > T + 1 && rule === "drop") return null;
  if (n > T + 1 && rule === "cut_prompt") {
    if (p < 0 || p + 1 >= n) return null;
    start = Math.max(0, Math.min(p - Math.floor(T / 2), n - (T + 1)));
  }
  const row = ex.slice(start, start + T + 1);
  const q = row.indexOf(ASST_ID);
  return q >= 0 && q + 1 < row.length ? row : null;
}

/** Targets counted in a row: target j counts iff the latest <|asst|>/<|eot|> in row[0..j] is <|asst|>. */
function naiveCounted(row: readonly number[]): number[] {
  const out: number[] = [];
  for (let j = 0; j + 1 < row.length; j++) {
    const last = row.slice(0, j + 1).filter((t) => t === ASST_ID || t === EOT_ID).pop();
    if (last === ASST_ID) out.push(row[j + 1]!);
  }
  return out;
}

function naiveStats(examples: readonly number[][], T: number, rule: Rule) {
  const s = { examples: examples.length, whole: 0, cut: 0, skipped: 0, response: 0, counted: 0 };
  for (const ex of examples) {
    s.response += naiveCounted(ex).length;
    const row = naiveRow(ex, T, rule);
    if (row === null) s.skipped++;
    else {
      if (ex.length <= T + 1) s.whole++;
      else s.cut++;
      s.counted += naiveCounted(row).length;
    }
  }
  return s;
}

// ------------------------------------------------------------------ prepare-data

describe("prepare-data on real-shaped records", () => {
  test("Dolly: exact duplicates left out before the split (counted); no prompt on both sides; the documented hash decides", () => {
    const out = join(root, "dolly-a");
    const r = prepare(["dolly", DOLLY, "--out", out, "--val-fraction", "0.3"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("2 of 12 examples left out as exact duplicates of an earlier one (before the split)");
    const { train, val } = sides(out);
    expect(train.length + val.length).toBe(10);
    expect(new Set([...train, ...val]).size).toBe(10);
    const prompts = (xs: string[]) => new Set(xs.map((x) => x.slice("<|user|>".length, x.indexOf("<|asst|>"))));
    const trainPrompts = prompts(train);
    for (const p of prompts(val)) expect(trainPrompts.has(p)).toBe(false);
    // the question asked twice with different answers: both on one side
    const boiling = [...train, ...val].filter((x) => x.includes("boiling point of water"));
    expect(boiling.length).toBe(2);
    expect(new Set(boiling.map((x) => (train.includes(x) ? "train" : "val"))).size).toBe(1);
    // every example on the side the documented formula gives
    for (const x of train) expect(documentedSide(x.slice(8, x.indexOf("<|asst|>")), 0, 0.3)).toBe("train");
    for (const x of val) expect(documentedSide(x.slice(8, x.indexOf("<|asst|>")), 0, 0.3)).toBe("val");
    expect(val.length).toBeGreaterThan(0);
    // non-ASCII survives byte for byte
    expect([...train, ...val].join()).toContain("赤い：りんご、いちご。");
    expect([...train, ...val].join()).toContain("🎂");
    expect([...train, ...val].join()).toContain("Zürich liegt am nördlichen Ende");
  });

  test("the same file given twice, reordered, or grown: every record keeps its side; another seed moves some", () => {
    const a = join(root, "dolly-a2");
    expect(prepare(["dolly", DOLLY, "--out", a, "--val-fraction", "0.3"]).code).toBe(0);
    const twice = join(root, "dolly-twice");
    const r = prepare(["dolly", DOLLY, DOLLY, "--out", twice, "--val-fraction", "0.3"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("14 of 24 examples left out as exact duplicates");
    for (const split of ["train", "val"]) {
      expect(readFileSync(join(twice, "sft", `dolly_${split}.bin`))).toEqual(readFileSync(join(a, "sft", `dolly_${split}.bin`)));
    }

    const lines = readFileSync(DOLLY, "utf8").trim().split("\n");
    const more = [
      { instruction: "Name a river that flows into the Black Sea.", context: "", response: "The Danube.", category: "open_qa" },
      { instruction: "Translate 'thank you' into Korean.", context: "", response: "감사합니다 (gamsahamnida).", category: "open_qa" },
      { instruction: "What colour is a ripe lemon?", context: "", response: "Yellow.", category: "open_qa" },
    ].map((x) => JSON.stringify(x));
    const grown = join(root, "dolly-grown.jsonl");
    writeFileSync(grown, [...more.slice(0, 2), ...lines.reverse(), more[2]].join("\n") + "\n");
    const g = join(root, "dolly-g");
    expect(prepare(["dolly", grown, "--out", g, "--val-fraction", "0.3"]).code).toBe(0);
    const before = sides(a);
    const after = sides(g);
    for (const x of before.train) expect(after.train).toContain(x);
    for (const x of before.val) expect(after.val).toContain(x);
    expect(after.train.length + after.val.length).toBe(13);

    const s1 = join(root, "dolly-seed1");
    expect(prepare(["dolly", DOLLY, "--out", s1, "--val-fraction", "0.3", "--seed", "1"]).code).toBe(0);
    expect(sides(s1).val.sort()).not.toEqual(before.val.sort());
  });

  test("oasst1: every thread of a tree, and a question asked in two trees, on one side", () => {
    const out = join(root, "oasst");
    const r = prepare(["oasst1", OASST, "--out", out, "--paths", "all", "--val-fraction", "0.5"]);
    expect(r.stderr).not.toContain("error");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("3 trees (messages layout): 4 conversations");
    const { train, val } = sides(out, "oasst1");
    expect(train.length + val.length).toBe(4);
    const camargue = (xs: string[]) => xs.filter((x) => x.startsWith("<|user|>I am planning a walking tour of the Camargue")).length;
    expect([camargue(train), camargue(val)].sort()).toEqual([0, 3]);
    expect([...train, ...val].join()).toContain("¿Cuál es la montaña más alta de España?");
  });

  test("the length table: a histogram with bins at the T values asked for, and per T what a run keeps", () => {
    const out = join(root, "dolly-table");
    const r = prepare(["dolly", DOLLY, "--out", out, "--context-lengths", "256,64,128"]);
    expect(r.code).toBe(0);
    const all = [...examplesOf(join(out, "sft", "dolly_train.bin")), ...examplesOf(join(out, "sft", "dolly_val.bin"))];
    const lengths = all.map((e) => e.length);
    const bin = (lo: number, hi: number) => lengths.filter((l) => l >= lo && l <= hi).length;
    expect(r.stdout).toMatch(new RegExp(`\\n  <= 65 +${bin(1, 65)} `));
    expect(r.stdout).toMatch(new RegExp(`\\n  66\\.\\.129 +${bin(66, 129)} `));
    expect(r.stdout).toMatch(new RegExp(`\\n  130\\.\\.257 +${bin(130, 257)} `));
    expect(r.stdout).toMatch(new RegExp(`\\n  > 257 +${bin(258, 1e9)} `));
    for (const T of [64, 128, 256]) {
      const s = naiveStats(all, T, "head");
      expect(r.stdout).toContain(`T=${T}: ${s.examples} examples: ${s.whole} kept whole, ${s.cut} cut, ${s.skipped} skipped`);
    }
    const bad = prepare(["dolly", DOLLY, "--out", out, "--context-lengths", "128,abc"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--context-lengths 128,abc: expected comma-separated integers >= 1");
  });
});

// ------------------------------------------------------------------ the SFT run

const MODEL = { V: 264, T: 128, C: 32, L: 1, H: 2, d_ff: 64 };
const TRAIN = { seed: 3, B: 2, total_steps: 4, eval_every: 4, eval_batches: 1, ckpt_every: 4, log_every: 2, warmup_steps: 1 };

/** A REPO_ROOT with the fixture's Dolly caches and an sft config with `longExamples`. */
function repoWithFixture(name: string, longExamples?: Rule): string {
  const repo = join(root, name);
  mkdirSync(join(repo, "configs"), { recursive: true });
  expect(prepare(["dolly", DOLLY, "--out", join(repo, "data", "cache"), "--val-fraction", "0.3"]).code).toBe(0);
  writeFileSync(join(repo, "configs", "model.json"), JSON.stringify(MODEL));
  writeFileSync(
    join(repo, "configs", "sft.json"),
    JSON.stringify({ model_cfg_path: "configs/model.json", init_from: "none", train_cfg: TRAIN, sft_sources: { dolly: 1 }, val_source: "sft", ...(longExamples ? { long_examples: longExamples } : {}) }),
  );
  return repo;
}

async function sftRun(repo: string): Promise<string> {
  const out = captureStream();
  const code = await runTraining({ phase: "sft", configPath: "configs/sft.json", device: "cpu", resume: { kind: "auto" } }, { repoRoot: repo, out, stop: { requested: null } });
  expect(code).toBe(0);
  return out.text();
}

describe("an SFT run on the fixture (T=128)", () => {
  test("head (default): the start line's counts, the warning, target tokens in progress, summary and metrics", async () => {
    const repo = repoWithFixture("run-head");
    const train = examplesOf(join(repo, "data", "cache", "sft", "dolly_train.bin"));
    const s = naiveStats(train, 128, "head");
    expect(s.skipped / s.examples).toBeGreaterThan(0.1); // the long contexts: the fixture makes the case
    const text = await sftRun(repo);
    const share = ((100 * s.counted) / s.response).toFixed(1);
    expect(text).toContain(
      `sft: sft data dolly_train (T=128, long_examples "head"): ${s.examples} examples: ${s.whole} kept whole, ${s.cut} cut, ${s.skipped} skipped (${s.skipped} with no answer token in their row); ` +
        `${share} % of response tokens counted (${s.counted} of ${s.response})`,
    );
    expect(text).toContain(
      `sft: warning: dolly_train: ${s.skipped} of ${s.examples} examples (${((100 * s.skipped) / s.examples).toFixed(1)} %) are skipped at T=128; ` +
        `their answer starts too late in the row: use a model with a larger T, or shorter prompts (e.g. shorter contexts), or set "long_examples": "cut_prompt" in the sft config`,
    );

    // target tokens: what the loss counted in the 4 steps' batches, drawn again here
    const ds = SFTExampleDataset.open(join(repo, "data", "cache"), mixtureOf({ dolly: 1 }, "sft"), "train", { B: 2, T: 128, seed: 3, modelV: 264 });
    const per = [0, 1, 2, 3].map((step) => {
      const b = ds.getBatch(step);
      return Array.from(b.yMasked).filter((y) => y !== -100).length;
    });
    const total = per.reduce((a, b) => a + b, 0);
    expect(total).toBeLessThan(4 * 2 * 128);
    const trainRecords = readMetrics(join(repo, "checkpoints", "metrics.jsonl")).filter((r) => r.kind === "train");
    expect(trainRecords.map((r) => r.target_tokens)).toEqual([per[0]! + per[1]!, total]);
    expect(text).toMatch(new RegExp(`\\[sft\\] step 4/4 \\|.* \\| tokens 1\\.0k \\(targets ${total}, ${((100 * total) / 1024).toFixed(1)} %\\)`));
    expect(text).toContain(`target tokens ${total.toLocaleString("en-US")} (${((100 * total) / 1024).toFixed(1)} % of tokens seen: the ones the loss counts)`);
    // a resumed run starts from the same count
    expect(ds.targetsBefore(2)).toBe(per[0]! + per[1]!);
    expect(ds.targetsBefore(4)).toBe(total);
  }, 60_000);

  test('long_examples "cut_prompt": nothing skipped, no warning, more of the answers counted', async () => {
    const repo = repoWithFixture("run-cut-prompt", "cut_prompt");
    const train = examplesOf(join(repo, "data", "cache", "sft", "dolly_train.bin"));
    const s = naiveStats(train, 128, "cut_prompt");
    const head = naiveStats(train, 128, "head");
    expect(s.skipped).toBe(0);
    expect(s.counted).toBeGreaterThan(head.counted);
    const text = await sftRun(repo);
    expect(text).toContain(
      `sft data dolly_train (T=128, long_examples "cut_prompt"): ${s.examples} examples: ${s.whole} kept whole, ${s.cut} cut, 0 skipped; ` +
        `${((100 * s.counted) / s.response).toFixed(1)} % of response tokens counted (${s.counted} of ${s.response})`,
    );
    expect(text).not.toContain("warning:");
  }, 60_000);

  test("an unknown long_examples value: a config error (exit 2) naming the key and the choices", async () => {
    const repo = repoWithFixture("run-bad-rule");
    const file = join(repo, "configs", "sft.json");
    writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, "utf8")), long_examples: "tail" }));
    const e = await runTraining({ phase: "sft", configPath: "configs/sft.json", device: "cpu", resume: { kind: "auto" } }, { repoRoot: repo, out: captureStream(), stop: { requested: null } }).catch((err: unknown) => err);
    expect(exitCodeOf(e)).toBe(2);
    expect((e as Error).message).toContain('/long_examples: expected one of "head", "cut_prompt", "drop", got "tail"');
  });

  test('long_examples "drop": the long examples are skipped, and the warning says what to do', async () => {
    const repo = repoWithFixture("run-drop", "drop");
    const train = examplesOf(join(repo, "data", "cache", "sft", "dolly_train.bin"));
    const s = naiveStats(train, 128, "drop");
    const tooLong = train.filter((e) => e.length > 129).length;
    expect(s.cut).toBe(0);
    expect(s.skipped).toBe(tooLong);
    const text = await sftRun(repo);
    expect(text).toContain(`${s.whole} kept whole, 0 cut, ${tooLong} skipped (${tooLong} longer than T+1=129)`);
    expect(text).toContain(`are skipped at T=128; they are longer than T+1 and long_examples is "drop": use a model with a larger T, or set "long_examples": "cut_prompt" (or "head") in the sft config`);
  }, 60_000);
});

// ------------------------------------------------------------------ the rows

describe("the rows each rule draws (T=128)", () => {
  const T = 128;
  let cache: string;
  beforeAll(() => {
    cache = join(root, "rows");
    expect(prepare(["dolly", DOLLY, "--out", cache, "--split", "train"]).code).toBe(0);
  });

  test.each(["head", "cut_prompt", "drop"] as const)("%s: every row is the documented row of an example; its counted targets are that row's", (rule) => {
    const examples = examplesOf(join(cache, "sft", "dolly_train.bin"));
    const rows = new Map(examples.map((e) => [e, naiveRow(e, T, rule)] as const));
    const allowed = new Set([...rows.values()].filter((r) => r !== null).map((r) => text(r!)));
    const ds = SFTExampleDataset.open(cache, mixtureOf({ dolly: 1 }, "sft"), "train", { B: 8, T, seed: 11, modelV: 264, longExamples: rule });
    const seen = new Set<string>();
    for (let step = 0; step < 40; step++) {
      const b = ds.getBatch(step);
      for (let r = 0; r < 8; r++) {
        const x = Array.from(b.x.subarray(r * T, (r + 1) * T));
        const y = Array.from(b.y.subarray(r * T, (r + 1) * T));
        const len = [...x, y[T - 1]!].indexOf(PAD_ID) < 0 ? T + 1 : [...x, y[T - 1]!].indexOf(PAD_ID);
        const row = [...x, y[T - 1]!].slice(0, len);
        expect(allowed.has(text(row))).toBe(true);
        seen.add(text(row));
        const counted = Array.from(b.yMasked.subarray(r * T, (r + 1) * T)).filter((v) => v !== -100);
        expect(counted).toEqual(naiveCounted(row));
      }
    }
    expect(seen.size).toBe(allowed.size); // 320 draws reach every drawable example
    const s = naiveStats(examples, T, rule);
    expect(ds.stats.dolly).toMatchObject({ examples: s.examples, whole: s.whole, cut: s.cut, countedTargets: s.counted, responseTargets: s.response });
    expect(ds.skipped.dolly).toBe(s.skipped);
  });

  test("cut_prompt keeps the end of a long context and the whole short answer", () => {
    const ds = SFTExampleDataset.open(cache, mixtureOf({ dolly: 1 }, "sft"), "train", { B: 16, T, seed: 5, modelV: 264, longExamples: "cut_prompt" });
    let found = false;
    for (let step = 0; step < 20 && !found; step++) {
      const b = ds.getBatch(step);
      for (let r = 0; r < 16; r++) {
        const x = text(Array.from(b.x.subarray(r * T, (r + 1) * T)));
        if (!x.includes("keepers left the rock for good.")) continue;
        found = true;
        // the row ends with the example: the last words of the context, the question's answer whole
        const targets = Array.from(b.yMasked.subarray(r * T, (r + 1) * T)).filter((v) => v !== -100);
        expect(text(targets)).toBe("It was first lit on 1 February 1844.<|eot|>");
        expect(x).not.toContain("<|user|>"); // the head of the prompt is what was cut
      }
    }
    expect(found).toBe(true);
  });

  test("drop at a T that no example fits: an error naming the cache and why", () => {
    expect(() => SFTExampleDataset.open(cache, mixtureOf({ dolly: 1 }, "sft"), "train", { B: 1, T: 64, seed: 0, modelV: 264, longExamples: "drop" })).toThrow(
      `${join(cache, "sft", "dolly_train.bin")}: none of its 10 examples has a target to learn within T+1=65 tokens (10 of them longer than T+1, dropped by long_examples "drop")`,
    );
  });
});

describe("TrainStats: tokens seen and target tokens of a phase", () => {
  test("counted from the resume point, over every step taken (a step not applied too); the log record carries target_tokens", () => {
    let t = 0;
    const stats = new TrainStats({ totalSteps: 10, startStep: 4, logEvery: 2, tokensBefore: 4 * 256, targetsBefore: 300, now: () => (t += 100) });
    expect(stats.step({ step: 5, loss: 2, lr: 1e-3, tokens: 256, targets: 90 })).toBeNull();
    stats.notApplied(256, 70); // step 6: a non-finite step, seen all the same
    const logged = stats.step({ step: 7, loss: 2, lr: 1e-3, tokens: 256, targets: 80 });
    expect(logged!.log.target_tokens).toBe(300 + 90 + 70 + 80);
    expect(stats.phaseTokens).toBe(7 * 256);
    expect(stats.phaseTargets).toBe(540);
    expect(stats.step({ step: 8, loss: 2, lr: 1e-3, tokens: 256 })!.log.target_tokens).toBe(540 + 256); // default: every target counts
  });
});
