import { describe, expect, test } from "bun:test";
import type { TrainLog } from "../src/train/stats";
import { fmtDuration, type CheckpointInfo, type EvalInfo, ProgressPrinter, type ProgressOptions, type ProgressStream } from "../src/train/progress";
import { type StatsOptions, TrainStats } from "../src/train/stats";

/**
 * The loop's statistics and the printer, paired as src/train/loop.ts pairs them: a step is
 * recorded, then shown; an eval recorded, then shown; a save shown, then its time excluded.
 */
class ProgressReporter {
  readonly stats: TrainStats;
  readonly printer: ProgressPrinter;
  constructor(o: StatsOptions & Omit<ProgressOptions, "stats">) {
    this.stats = new TrainStats(o);
    this.printer = new ProgressPrinter({ ...o, stats: this.stats });
  }
  get live(): boolean {
    return this.printer.live;
  }
  step(s: Parameters<TrainStats["step"]>[0]): TrainLog | null {
    const logged = this.stats.step(s);
    this.printer.step(logged);
    return logged?.log ?? null;
  }
  eval(e: EvalInfo): void {
    this.stats.evaluated(e.valLoss);
    this.printer.eval(e);
  }
  checkpoint(c: CheckpointInfo): void {
    this.printer.checkpoint(c);
    this.stats.paused();
  }
  activity(label: string | null): void {
    this.printer.activity(label);
  }
  finish(): void {
    this.printer.finish();
  }
  session(): ReturnType<TrainStats["session"]> {
    return this.stats.session();
  }
}

/** A stream that records everything written; a terminal or not. */
class FakeStream implements ProgressStream {
  chunks: string[] = [];
  constructor(
    readonly isTTY: boolean,
    readonly columns = 120,
  ) {}
  write(s: string): boolean {
    this.chunks.push(s);
    return true;
  }
  get text(): string {
    return this.chunks.join("");
  }
}

/**
 * What a terminal shows after this output: "\r" returns to column 0, ESC[K erases to the end
 * of the line, "\n" moves to a new line. Any other escape sequence fails the test.
 */
function screen(out: string): string[] {
  const lines: string[] = [""];
  let col = 0;
  for (let i = 0; i < out.length; i++) {
    const ch = out[i]!;
    const row = lines.length - 1;
    if (ch === "\r") col = 0;
    else if (ch === "\n") {
      lines.push("");
      col = 0;
    } else if (ch === "\x1b") {
      expect(out.slice(i, i + 3)).toBe("\x1b[K");
      lines[row] = lines[row]!.slice(0, col);
      i += 2;
    } else {
      const l = lines[row]!;
      lines[row] = l.slice(0, col) + ch + l.slice(col + 1);
      col++;
    }
  }
  return lines;
}

/** A clock the test moves by hand. */
function clock(): { now: () => number; advance: (ms: number) => void } {
  let t = 1000;
  return { now: () => t, advance: (ms) => (t += ms) };
}

/** Drive a reporter through steps (startStep, endStep], 100 ms and 512 tokens per step. */
function run(rep: ProgressReporter, c: ReturnType<typeof clock>, from: number, to: number, loss: (s: number) => number) {
  const logs = [];
  for (let s = from + 1; s <= to; s++) {
    c.advance(100);
    const log = rep.step({ step: s, loss: loss(s), lr: 3e-4, tokens: 512 });
    if (log) logs.push(log);
  }
  return logs;
}

const loss = (s: number): number => 10 / Math.sqrt(s);

describe("ProgressReporter", () => {
  test("terminal: live line redrawn in place, throttled; plain lines never garbled", () => {
    const out = new FakeStream(true);
    const c = clock();
    const rep = new ProgressReporter({ phase: "pretrain", totalSteps: 120, startStep: 0, out, env: { TERM: "xterm" }, now: c.now, redrawMs: 250 });
    expect(rep.live).toBe(true);
    run(rep, c, 0, 100, loss);
    c.advance(3000);
    rep.eval({ step: 100, valLoss: 1.2345, best: 1.2345, improved: true, seconds: 3 });
    c.advance(500);
    rep.checkpoint({ step: 100, paths: ["checkpoints/step_0000100.pt", "checkpoints/latest.pt"] });
    run(rep, c, 100, 120, loss);
    rep.finish();

    const text = out.text;
    // Redraws: one step every 100 ms, at most one redraw per 250 ms (plus the redraws that
    // follow each plain line), far fewer than the 120 steps.
    const redraws = text.split("\r").length - 1;
    expect(redraws).toBeGreaterThan(20);
    expect(redraws).toBeLessThan(70);
    // A live line is shown and redrawn in place (no newline between two live states).
    expect(text).toContain("\r\x1b[K[pretrain] [");
    expect(text).toMatch(/tok\/s \| loss  \d\.\d{4} \| lr 3\.00e-4/);

    // After finish(), the terminal shows exactly the plain lines, in order, intact.
    const shown = screen(text).filter((l) => l !== "");
    expect(shown).toHaveLength(5);
    expect(shown[0]).toMatch(/^\[pretrain\] step  50\/120 \| lr 3\.00e-4 \| train_loss \d\.\d{4} \| tokens\/s 5120 \| tokens 25\.6k \| elapsed 5s \| eta 7s$/);
    expect(shown[1]).toMatch(/^\[pretrain\] step 100\/120 \| /);
    expect(shown[2]).toBe("[pretrain] eval step 100/120 | val_loss 1.2345 | best 1.2345 (new best) | 3.0s");
    expect(shown[3]).toBe("[pretrain] checkpoint step 100/120 -> checkpoints/step_0000100.pt, checkpoints/latest.pt");
    expect(shown[4]).toMatch(/^\[pretrain\] step 120\/120 \| .*last_val_loss 1\.2345 \| tokens\/s 5120 \| tokens 61\.4k \| elapsed \d+s$/);
  });

  test("not a terminal: no live output at all, the same plain lines", () => {
    const out = new FakeStream(false);
    const c = clock();
    const rep = new ProgressReporter({ phase: "sft", totalSteps: 120, startStep: 0, out, env: { TERM: "xterm" }, now: c.now });
    expect(rep.live).toBe(false);
    run(rep, c, 0, 100, loss);
    rep.eval({ step: 100, valLoss: 2.5, best: 2.25, improved: false });
    rep.activity("saving");
    rep.checkpoint({ step: 100, paths: ["checkpoints/latest.pt"] });
    run(rep, c, 100, 120, loss);
    rep.finish();
    const text = out.text;
    expect(text).not.toContain("\r");
    expect(text).not.toContain("\x1b");
    const lines = text.split("\n");
    expect(lines.pop()).toBe("");
    expect(lines.map((l) => l.split(" | ")[0])).toEqual([
      "[sft] step  50/120",
      "[sft] step 100/120",
      "[sft] eval step 100/120",
      "[sft] checkpoint step 100/120 -> checkpoints/latest.pt",
      "[sft] step 120/120",
    ]);
    expect(lines[2]).toBe("[sft] eval step 100/120 | val_loss 2.5000 | best 2.2500");
  });

  test("a terminal with TERM=dumb gets no live line", () => {
    const out = new FakeStream(true);
    const c = clock();
    const rep = new ProgressReporter({ phase: "pretrain", totalSteps: 60, startStep: 0, out, env: { TERM: "dumb" }, now: c.now });
    run(rep, c, 0, 60, loss);
    rep.finish();
    expect(rep.live).toBe(false);
    expect(out.text).not.toContain("\r");
    expect(out.text.split("\n").filter(Boolean)).toHaveLength(2);
  });

  test("moving average is the mean of the window since the last log line; resume-invariant", () => {
    const c1 = clock();
    const a = new ProgressReporter({ phase: "pretrain", totalSteps: 200, startStep: 0, out: new FakeStream(false), now: c1.now });
    const logsA = run(a, c1, 0, 200, loss);
    expect(logsA.map((l) => l.step)).toEqual([50, 100, 150, 200]);
    const mean = (lo: number, hi: number): number => {
      let s = 0;
      for (let i = lo; i <= hi; i++) s += loss(i);
      return s / (hi - lo + 1);
    };
    expect(logsA[0]!.train_loss).toBeCloseTo(mean(1, 50), 12);
    expect(logsA[1]!.train_loss).toBeCloseTo(mean(51, 100), 12);
    expect(logsA[3]!.train_loss).toBeCloseTo(mean(151, 200), 12);

    // Resumed from the checkpoint at step 100: the same logged values afterwards.
    const c2 = clock();
    const b = new ProgressReporter({ phase: "pretrain", totalSteps: 200, startStep: 100, lastValLoss: 1.5, out: new FakeStream(false), now: c2.now });
    const logsB = run(b, c2, 100, 200, loss);
    expect(logsB.map((l) => [l.step, l.train_loss])).toEqual(logsA.slice(2).map((l) => [l.step, l.train_loss]));
    expect(logsB[0]!.last_val_loss).toBe(1.5);
    const st = b.session();
    expect([st.steps, st.tokens]).toEqual([100, 51200]);
    expect(st.trainSeconds).toBeCloseTo(10, 9);
    expect(st.wallSeconds).toBeCloseTo(10, 9);
  });

  test("a resume between log lines refills the window: the same train_loss, to the bit; tokens/s of this session", () => {
    const c1 = clock();
    const a = new ProgressReporter({ phase: "pretrain", totalSteps: 200, startStep: 0, out: new FakeStream(false), now: c1.now });
    const logsA = run(a, c1, 0, 200, loss);

    // Stopped at step 137 (a checkpoint between the log lines of 100 and 150), resumed there.
    const restored = Array.from({ length: 37 }, (_, i) => ({ step: 101 + i, loss: loss(101 + i) }));
    const resumed = () => new ProgressReporter({ phase: "pretrain", totalSteps: 200, startStep: 137, out: new FakeStream(false), now: c2.now });
    const c2 = clock();
    const b = resumed();
    b.stats.restoreWindow(restored);
    expect(b.stats.windowSteps).toBe(37);
    const logsB = run(b, c2, 137, 200, loss);
    expect(logsB.map((l) => [l.step, l.train_loss])).toEqual(logsA.slice(2).map((l) => [l.step, l.train_loss]));
    // tokens/s: the 13 steps this session ran (512 tokens per 100 ms), not the restored ones
    expect(logsB[0]!.tokens_per_s).toBeCloseTo(5120, 6);

    // Without the refill the first log line after the resume averages 13 steps, not 50.
    const c4 = clock();
    const d = new ProgressReporter({ phase: "pretrain", totalSteps: 200, startStep: 137, out: new FakeStream(false), now: c4.now });
    expect(run(d, c4, 137, 200, loss)[0]!.train_loss).not.toBe(logsA[2]!.train_loss);

    // Restored steps come before the session's first step, in order.
    const e = resumed();
    expect(() => e.stats.restoreWindow([{ step: 138, loss: 1 }])).toThrow("restored step");
    expect(() => e.stats.restoreWindow([{ step: 120, loss: 1 }, { step: 110, loss: 1 }])).toThrow("restored step");
    const f = resumed();
    run(f, c2, 137, 138, loss);
    expect(() => f.stats.restoreWindow([{ step: 120, loss: 1 }])).toThrow("restored step");
  });

  test("tokens/s counts training time only: eval and checkpoint time are excluded", () => {
    const c = clock();
    const rep = new ProgressReporter({ phase: "pretrain", totalSteps: 100, startStep: 0, out: new FakeStream(false), now: c.now });
    run(rep, c, 0, 70, loss);
    c.advance(60_000); // a one-minute eval
    rep.eval({ step: 70, valLoss: 3, best: 3, improved: true });
    c.advance(10_000); // a ten-second save
    rep.checkpoint({ step: 70, paths: ["x"] });
    const logs = run(rep, c, 70, 100, loss);
    expect(logs[0]!.tokens_per_s).toBeCloseTo(512 / 0.1, 6);
    const st = rep.session();
    expect(st.trainSeconds).toBeCloseTo(10, 9);
    expect(st.wallSeconds).toBeCloseTo(80, 9);
  });

  test("live line fits a narrow terminal and shows the activity", () => {
    const out = new FakeStream(true, 60);
    const c = clock();
    const rep = new ProgressReporter({ phase: "pretrain", totalSteps: 20000, startStep: 0, out, env: { TERM: "xterm-256color" }, now: c.now });
    run(rep, c, 0, 10, loss);
    rep.activity("eval");
    const last = out.chunks[out.chunks.length - 1]!;
    expect(last.startsWith("\r\x1b[K")).toBe(true);
    const visible = last.slice(4);
    expect(visible.length).toBeLessThanOrEqual(59);
    expect(visible).toBe("[pretrain]    10/20000   0.1% | eval... | eta 33m19s");
    rep.finish();
    expect(screen(out.text).join("")).toBe("");
  });

  test("live frames keep one length (no jitter) and a bar on a wide terminal", () => {
    const out = new FakeStream(true, 120);
    const c = clock();
    const rep = new ProgressReporter({ phase: "pretrain", totalSteps: 1000, startStep: 0, out, env: { TERM: "xterm" }, now: c.now, redrawMs: 0 });
    for (let s = 1; s <= 120; s++) {
      c.advance(s < 60 ? 100 : 2500); // the ETA and tokens/s change their number of digits
      rep.step({ step: s, loss: s < 30 ? 12 - s / 10 : 3.5, lr: 3e-4, tokens: s < 60 ? 512 : 50_000 });
      if (s === 70) rep.eval({ step: 70, valLoss: 3.9, best: 3.9, improved: true });
    }
    // The live frame is what follows the clear sequence or the last newline of a write.
    const frames = out.chunks.filter((ch) => ch.startsWith("\r\x1b[K")).map((ch) => ch.slice(ch.lastIndexOf("\n") + 1).replace("\r\x1b[K", ""));
    expect(frames.length).toBeGreaterThan(100);
    const lengths = new Set(frames.map((f) => f.length));
    expect(lengths.size).toBe(1);
    expect([...lengths][0]).toBeLessThanOrEqual(119);
    expect(frames[frames.length - 1]).toBe(
      "[pretrain] [##-----------------]  120/1000  12.0% | eta 19m22s |  20.0k tok/s | loss  3.5000 | lr 3.00e-4 | val  3.9000",
    );
  });

  test("steps must increase; an unreported step still triggers the log line", () => {
    const rep = new ProgressReporter({ phase: "pretrain", totalSteps: 200, startStep: 3, out: new FakeStream(false) });
    expect(() => rep.step({ step: 3, loss: 1, lr: 1, tokens: 1 })).toThrow("steps must increase");
    rep.step({ step: 4, loss: 1, lr: 1, tokens: 1 });
    expect(() => rep.step({ step: 4, loss: 1, lr: 1, tokens: 1 })).toThrow("steps must increase");
    for (let s = 5; s <= 49; s++) expect(rep.step({ step: s, loss: 1, lr: 1, tokens: 1 })).toBeNull();
    // Step 50 skipped (not reported): the line comes at 51.
    expect(rep.step({ step: 51, loss: 1, lr: 1, tokens: 1 })?.step).toBe(51);
  });

  test("non-finite losses are left out of the mean and counted in the log line", () => {
    const out = new FakeStream(false);
    const c = clock();
    const rep = new ProgressReporter({ phase: "pretrain", totalSteps: 100, startStep: 0, out, now: c.now });
    const logs = run(rep, c, 0, 50, (s) => (s === 7 || s === 9 ? NaN : s === 8 ? Infinity : 2));
    expect(logs[0]!.train_loss).toBe(2);
    expect(out.text).toContain("| train_loss 2.0000 | non-finite losses 3 | tokens/s 5120 |");
    const all = run(rep, c, 50, 100, () => NaN);
    expect(all[0]!.train_loss).toBeNaN();
    expect(out.text).toContain("| train_loss nan | non-finite losses 50 |");
  });

  test("durations", () => {
    expect(fmtDuration(42.4)).toBe("42s");
    expect(fmtDuration(185)).toBe("3m05s");
    expect(fmtDuration(3725)).toBe("1h02m");
    expect(fmtDuration(90000)).toBe("1d01h");
    expect(fmtDuration(NaN)).toBe("-");
  });
});
