/**
 * The benchmark's statistic (bench/rounds.ts, issue 22): a side is judged by its median
 * round, not its best; best and worst are kept beside it; peak RSS is the largest round's.
 * And S4 is GPT-2 small: 124,439,808 parameters (GPT-2's 124M, wpe included).
 */
import { describe, expect, test } from "bun:test";
import { middle, rounds } from "../bench/rounds.ts";
import { SHAPES } from "../bench/shapes.ts";
import { numParams } from "../src/model/layout.ts";

const run = (stepS: number, evalS: number, maxRssBytes: number) => ({ result: { stepS, evalS }, maxRssBytes });

describe("bench rounds", () => {
  test("an odd count: the median round judges, whatever the order the rounds ran in", () => {
    const r = rounds([run(0.3, 0.05, 100), run(0.1, 0.09, 300), run(0.2, 0.07, 200)]);
    expect(r.median.stepS).toBe(0.2);
    expect(r.best.stepS).toBe(0.1);
    expect(r.worst.stepS).toBe(0.3);
    expect(r.evalS).toBe(0.07); // the eval times' own median, not the median round's
    expect(r.inOrder.map((x) => x.stepS)).toEqual([0.3, 0.1, 0.2]);
    expect(r.maxRssBytes).toBe(300);
  });

  test("a lucky round does not move the median: one fast outlier changes best, not the judged round", () => {
    const steady = [run(0.2, 0.1, 1), run(0.21, 0.1, 1), run(0.22, 0.1, 1)];
    const lucky = [run(0.2, 0.1, 1), run(0.05, 0.1, 1), run(0.22, 0.1, 1)];
    expect(rounds(lucky).median.stepS).toBe(0.2);
    expect(rounds(lucky).best.stepS).toBe(0.05);
    expect(rounds(steady).median.stepS).toBe(0.21);
  });

  test("an even count takes the slower middle round (no reward for the faster one); one round is its own median", () => {
    expect(rounds([run(0.1, 1, 1), run(0.4, 1, 1), run(0.2, 1, 1), run(0.3, 1, 1)]).median.stepS).toBe(0.3);
    expect(middle([4, 1, 3, 2])).toBe(3);
    const one = rounds([run(0.5, 0.2, 7)]);
    expect([one.median.stepS, one.best.stepS, one.worst.stepS, one.evalS]).toEqual([0.5, 0.5, 0.5, 0.2]);
  });
});

test("S4 is GPT-2 small: V=50257 T=1024 C=768 L=12 H=12 d_ff=3072 B=1, 124,439,808 parameters", () => {
  const s4 = SHAPES.S4!;
  expect(s4.cfg).toEqual({ V: 50257, T: 1024, C: 768, L: 12, H: 12, d_ff: 3072 });
  expect(s4.B).toBe(1);
  expect(numParams(s4.cfg)).toBe(124_439_808);
});
