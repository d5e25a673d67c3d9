import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { appendFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { MetricsLog, bestEval, readMetrics, type MetricsRecord } from "../src/train/metrics";
import { InputError } from "../src/errors";

let dir = "";
let path = "";
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "metrics-test-"));
  path = join(dir, "ckpt", "metrics.jsonl");
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** A clock the test moves by hand. */
function clock(start = 0) {
  let t = start;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

/** Simulate a session: a train record every 50 steps, an eval every 100, 1 s per step. */
function session(m: MetricsLog, c: ReturnType<typeof clock>, from: number, to: number): void {
  for (let s = from + 1; s <= to; s++) {
    c.advance(1000);
    if (s % 50 === 0) m.appendTrain({ step: s, lr: 1e-3 / s, train_loss: 10 - s / 100, tokens_per_s: 1234.5, target_tokens: 300 * s });
    if (s % 100 === 0) m.appendEval({ step: s, lr: 1e-3 / s, val_loss: 10.5 - s / 100 });
  }
}

const steps = (rs: MetricsRecord[], phase: string, kind: string): number[] =>
  rs.filter((r) => r.phase === phase && r.kind === kind).map((r) => r.step);

describe("metrics.jsonl", () => {
  test("records round-trip with every key, one JSON object per line", () => {
    const c = clock();
    const m = MetricsLog.open(path, { phase: "pretrain", resumeStep: null, now: c.now, epochMs: () => Date.UTC(2025, 0, 2, 3, 4, 5) });
    session(m, c, 0, 100);
    const lines = readFileSync(path, "utf8").split("\n");
    expect(lines.pop()).toBe("");
    expect(lines).toHaveLength(3);
    expect(JSON.parse(lines[2]!)).toEqual({
      phase: "pretrain",
      kind: "eval",
      step: 100,
      lr: 1e-5,
      train_loss: null,
      val_loss: 9.5,
      tokens_per_s: null,
      target_tokens: null,
      wall_time_s: 100,
      time: "2025-01-02T03:04:05.000Z",
    });
    expect(JSON.parse(lines[0]!)).toMatchObject({ kind: "train", step: 50, train_loss: 9.5, val_loss: null, tokens_per_s: 1234.5, target_tokens: 15000, wall_time_s: 50 });
    expect(readMetrics(path)).toEqual(m.records());
    expect(m.lastEval()?.val_loss).toBe(9.5);
  });

  test("a file written before target_tokens existed reads (target_tokens null) and is resumed", () => {
    const old = { phase: "sft", kind: "train", step: 50, lr: 1e-3, train_loss: 2, val_loss: null, tokens_per_s: 99, wall_time_s: 5, time: "2025-01-01T00:00:00.000Z" };
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, `${JSON.stringify(old)}\n`);
    expect(readMetrics(path)[0]!.target_tokens).toBeNull();
    const m = MetricsLog.open(path, { phase: "sft", resumeStep: 50 });
    m.appendTrain({ step: 100, lr: 1e-3, train_loss: 1.5, tokens_per_s: 99, target_tokens: 1234 });
    expect(readMetrics(path).map((r) => r.target_tokens)).toEqual([null, 1234]);
    expect(() => {
      writeFileSync(path, `${JSON.stringify({ ...old, target_tokens: "many" })}\n{}\n`);
      readMetrics(path);
    }).toThrow("target_tokens must be a number or null");
  });

  test("resume: later records dropped, torn last line dropped, every step exactly once", () => {
    const c1 = clock();
    const m1 = MetricsLog.open(path, { phase: "pretrain", resumeStep: null, now: c1.now });
    session(m1, c1, 0, 470); // checkpoint at 300, crash at 470 ...
    appendFileSync(path, '{"phase":"pretrain","kind":"train","step":500,"lr":0.0'); // ... in an append
    expect(() => readMetrics(path)).not.toThrow();

    const c2 = clock(5_000_000);
    const m2 = MetricsLog.open(path, { phase: "pretrain", resumeStep: 300, now: c2.now });
    // The file was rewritten: steps <= 300 only, no torn tail, no temp file left.
    const kept = readMetrics(path);
    expect(steps(kept, "pretrain", "train")).toEqual([50, 100, 150, 200, 250, 300]);
    expect(steps(kept, "pretrain", "eval")).toEqual([100, 200, 300]);
    expect(readFileSync(path, "utf8").endsWith("}\n")).toBe(true);
    expect(readdirSync(join(dir, "ckpt"))).toEqual(["metrics.jsonl"]);
    expect(m2.lastEval()?.step).toBe(300);

    session(m2, c2, 300, 600);
    const all = readMetrics(path);
    expect(steps(all, "pretrain", "train")).toEqual([50, 100, 150, 200, 250, 300, 350, 400, 450, 500, 550, 600]);
    expect(steps(all, "pretrain", "eval")).toEqual([100, 200, 300, 400, 500, 600]);
    // Wall time continues from the last kept record (300 s), not from the crash or the pause.
    const w = all.filter((r) => r.kind === "train").map((r) => r.wall_time_s);
    expect(w).toEqual([50, 100, 150, 200, 250, 300, 350, 400, 450, 500, 550, 600]);
    expect(m2.wallTimeS()).toBe(600);
  });

  test("a whole last line without its newline is kept, and the newline restored", () => {
    const c = clock();
    const m = MetricsLog.open(path, { phase: "sft", resumeStep: null, now: c.now });
    session(m, c, 0, 100);
    writeFileSync(path, readFileSync(path, "utf8").replace(/\n$/, ""));
    const m2 = MetricsLog.open(path, { phase: "sft", resumeStep: 100, now: c.now });
    expect(readFileSync(path, "utf8").endsWith("}\n")).toBe(true);
    expect(steps(m2.records(), "sft", "eval")).toEqual([100]);
    session(m2, c, 100, 150);
    expect(steps(readMetrics(path), "sft", "train")).toEqual([50, 100, 150]);
  });

  test("fresh start drops the phase's records; other phases are kept unless listed in dropPhases", () => {
    const c = clock();
    const pre = MetricsLog.open(path, { phase: "pretrain", resumeStep: null, now: c.now });
    session(pre, c, 0, 200);
    const sft = MetricsLog.open(path, { phase: "sft", resumeStep: null, now: c.now });
    session(sft, c, 0, 100);
    // SFT restarts from scratch: pretrain stays, and SFT's wall time continues after it.
    const sft2 = MetricsLog.open(path, { phase: "sft", resumeStep: null, now: c.now });
    expect(steps(sft2.records(), "pretrain", "train")).toEqual([50, 100, 150, 200]);
    expect(steps(sft2.records(), "sft", "train")).toEqual([]);
    session(sft2, c, 0, 50);
    expect(readMetrics(path).filter((r) => r.phase === "sft").map((r) => r.wall_time_s)).toEqual([250]);
    // A pipeline resuming pretrain at 100 makes every SFT record stale.
    const pre2 = MetricsLog.open(path, { phase: "pretrain", resumeStep: 100, dropPhases: ["sft"], now: c.now });
    expect(pre2.records().map((r) => `${r.phase}:${r.kind}:${r.step}`)).toEqual([
      "pretrain:train:50",
      "pretrain:train:100",
      "pretrain:eval:100",
    ]);
  });

  test("a step logged twice is refused", () => {
    const c = clock();
    const m = MetricsLog.open(path, { phase: "pretrain", resumeStep: null, now: c.now });
    session(m, c, 0, 100);
    expect(() => m.appendTrain({ step: 100, lr: 1, train_loss: 1, tokens_per_s: 1 })).toThrow("steps must increase");
    expect(() => m.appendEval({ step: 50, lr: 1, val_loss: 1 })).toThrow("steps must increase");
    m.appendTrain({ step: 150, lr: 1, train_loss: 1, tokens_per_s: 1 });
  });

  test("non-finite losses are stored as null", () => {
    const m = MetricsLog.open(path, { phase: "pretrain", resumeStep: null });
    m.appendTrain({ step: 50, lr: 1e-3, train_loss: NaN, tokens_per_s: Infinity });
    const [r] = readMetrics(path);
    expect(r!.train_loss).toBeNull();
    expect(r!.tokens_per_s).toBeNull();
  });

  test("a damaged line that is not the last is an input error naming file and line", () => {
    const c = clock();
    const m = MetricsLog.open(path, { phase: "pretrain", resumeStep: null, now: c.now });
    session(m, c, 0, 200);
    const lines = readFileSync(path, "utf8").split("\n");
    lines[1] = lines[1]!.slice(0, 20);
    writeFileSync(path, lines.join("\n"));
    const open = () => MetricsLog.open(path, { phase: "pretrain", resumeStep: 100 });
    expect(open).toThrow(InputError);
    expect(open).toThrow(`${path}:2: not valid JSON`);
    lines[1] = '{"phase":"pretrain","kind":"train","step":-1}';
    writeFileSync(path, lines.join("\n"));
    expect(() => readMetrics(path)).toThrow(`${path}:2: bad metrics record: missing key "lr"`);
    lines[1] = lines[0]!.replace('"kind":"train"', '"kind":"test"');
    writeFileSync(path, lines.join("\n"));
    expect(() => readMetrics(path)).toThrow(`${path}:2: bad metrics record: kind must be one of run, step, train, eval, got "test"`);
  });

  test("step records: buffered until the next train or eval record or a flush; a resume gets the steps since the last train record", () => {
    const c = clock();
    const m = MetricsLog.open(path, { phase: "pretrain", resumeStep: null, build: "build A", now: c.now });
    const onDisk = () => readMetrics(path).map((r) => `${r.kind} ${r.step}`);
    expect(onDisk()).toEqual(["run 0"]);
    expect(readMetrics(path)[0]!.version).toBe("build A");
    const lossOf = (s: number) => 1 / s;
    for (let s = 1; s <= 7; s++) {
      c.advance(1000);
      m.appendStep({ step: s, lr: 1e-3, loss: lossOf(s) });
      if (s === 3) m.appendEval({ step: 3, lr: 1e-3, val_loss: 2 });
      if (s === 5) m.appendTrain({ step: 5, lr: 1e-3, train_loss: 0.5, tokens_per_s: 10 });
    }
    expect(onDisk()).toEqual(["run 0", "step 1", "step 2", "step 3", "eval 3", "step 4", "step 5", "train 5"]);
    expect(m.records().map((r) => `${r.kind} ${r.step}`).slice(-2)).toEqual(["step 6", "step 7"]); // not yet written
    expect(() => m.appendStep({ step: 7, lr: 1e-3, loss: 1 })).toThrow("steps must increase");
    m.flush();
    expect(onDisk().slice(-2)).toEqual(["step 6", "step 7"]);
    expect(readMetrics(path)).toEqual(m.records());
    const step6 = readMetrics(path).find((r) => r.kind === "step" && r.step === 6)!;
    expect(step6).toMatchObject({ lr: 1e-3, train_loss: lossOf(6), val_loss: null, tokens_per_s: null, wall_time_s: 6 });

    // The same build resumes: no run record; the window's steps come back, their losses to the bit.
    const again = MetricsLog.open(path, { phase: "pretrain", resumeStep: 7, build: "build A", now: c.now });
    expect(again.records().filter((r) => r.kind === "run")).toHaveLength(1);
    expect(again.unloggedSteps().map((r) => [r.step, r.train_loss])).toEqual([[6, lossOf(6)], [7, lossOf(7)]]);
    // Another build resumes at 6: step 7 dropped, a run record at 6 names the new build.
    const other = MetricsLog.open(path, { phase: "pretrain", resumeStep: 6, build: "build B", now: c.now });
    expect(onDisk().slice(-3)).toEqual(["train 5", "step 6", "run 6"]);
    expect(other.unloggedSteps().map((r) => r.step)).toEqual([6]);
    expect(readMetrics(path).filter((r) => r.kind === "run").map((r) => [r.step, r.version])).toEqual([[0, "build A"], [6, "build B"]]);
    // Resumed at the train record: nothing to refill.
    expect(MetricsLog.open(path, { phase: "pretrain", resumeStep: 5, build: "build B", now: c.now }).unloggedSteps()).toEqual([]);
  });

  test("a run record without its version is a bad record", () => {
    MetricsLog.open(path, { phase: "sft", resumeStep: null, build: "x" });
    const line = readFileSync(path, "utf8").replace(/,"version":"x"/, "");
    writeFileSync(path, line + line);
    expect(() => readMetrics(path)).toThrow(`${path}:1: bad metrics record: a run record needs "version", a string; got undefined`);
  });

  test("bestEval: lowest val loss of the phase, earliest on ties", () => {
    const c = clock();
    const m = MetricsLog.open(path, { phase: "pretrain", resumeStep: null, now: c.now });
    for (const [s, v] of [[100, 3], [200, 2.5], [300, 2.5], [400, 2.7]] as const) m.appendEval({ step: s, lr: null, val_loss: v });
    expect(bestEval(m.records(), "pretrain")?.step).toBe(200);
    expect(bestEval(m.records(), "sft")).toBeNull();
  });
});
