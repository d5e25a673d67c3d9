/**
 * LR schedule (src/train/schedule.ts): values at the boundary steps against the formula
 * written out here independently, the edge cases warmup 0 and warmup == total, and that the
 * runner logs the lr of the schedule for every step it takes.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { learningRate, type ScheduleCfg } from "../src/train/schedule.ts";
import { runTraining } from "../src/train/run.ts";
import { captureStream, makeTinyRepo } from "./helpers/repo.ts";


/**
 * The contract, spelled out: step s (0-based) of N steps with W warmup steps gets
 *   s < W:       base * (s+1)/W                          (linear, reaching base at s = W-1)
 *   W <= s < N:  min + (base-min) * (1 + cos(pi * (s-W)/(N-W))) / 2
 *   s >= N:      min
 */
function expected(s: number, c: ScheduleCfg): number {
  if (s < c.warmup_steps) return c.base_lr * ((s + 1) / c.warmup_steps);
  if (s >= c.total_steps) return c.min_lr;
  const angle = (Math.PI * (s - c.warmup_steps)) / (c.total_steps - c.warmup_steps);
  return c.min_lr + ((c.base_lr - c.min_lr) * (1 + Math.cos(angle))) / 2;
}

const cfg: ScheduleCfg = { base_lr: 3e-4, min_lr: 3e-5, warmup_steps: 200, total_steps: 20000 };

function close(a: number, b: number): void {
  expect(Math.abs(a - b)).toBeLessThanOrEqual(1e-12 * Math.max(1, Math.abs(b)));
}

describe("learningRate at the boundary steps (spec defaults: 3e-4, warmup 200, min 3e-5, 20000 steps)", () => {
  test("step 0 is base/warmup, not 0 (the first update is not wasted)", () => {
    close(learningRate(0, cfg), 3e-4 / 200);
    close(learningRate(0, cfg), expected(0, cfg));
  });

  test("warmup-1 and warmup both give base_lr; warmup is linear in between", () => {
    close(learningRate(199, cfg), 3e-4);
    close(learningRate(200, cfg), 3e-4);
    close(learningRate(99, cfg), 3e-4 * 0.5);
    for (const s of [1, 17, 150, 198]) close(learningRate(s, cfg), expected(s, cfg));
  });

  test("midpoint of the cosine is (base + min) / 2", () => {
    const mid = 200 + (20000 - 200) / 2; // 10100
    close(learningRate(mid, cfg), (3e-4 + 3e-5) / 2);
    close(learningRate(mid, cfg), expected(mid, cfg));
    // a quarter of the way: cos(pi/4)
    close(learningRate(200 + 4950, cfg), 3e-5 + 2.7e-4 * (1 + Math.SQRT1_2) / 2);
  });

  test("total-1 is just above min_lr, total and beyond are min_lr", () => {
    const last = learningRate(19999, cfg);
    close(last, expected(19999, cfg));
    expect(last).toBeGreaterThan(3e-5);
    expect(last - 3e-5).toBeLessThan(1e-10);
    close(learningRate(20000, cfg), 3e-5);
    close(learningRate(25000, cfg), 3e-5);
  });

  test("matches the formula at every step of a small run, monotone up then down, within [min, base]", () => {
    const small: ScheduleCfg = { base_lr: 1e-3, min_lr: 1e-4, warmup_steps: 7, total_steps: 53 };
    let prev = 0;
    for (let s = 0; s <= small.total_steps + 3; s++) {
      const lr = learningRate(s, small);
      close(lr, expected(s, small));
      expect(lr).toBeGreaterThanOrEqual(s < small.warmup_steps ? 0 : small.min_lr);
      expect(lr).toBeLessThanOrEqual(small.base_lr);
      if (s < small.warmup_steps) expect(lr).toBeGreaterThan(prev);
      else if (s > small.warmup_steps) expect(lr).toBeLessThanOrEqual(prev);
      prev = lr;
    }
  });
});

describe("learningRate edge cases", () => {
  test("warmup 0: cosine from base_lr at step 0", () => {
    const c: ScheduleCfg = { base_lr: 1e-3, min_lr: 1e-5, warmup_steps: 0, total_steps: 100 };
    close(learningRate(0, c), 1e-3);
    close(learningRate(50, c), (1e-3 + 1e-5) / 2);
    close(learningRate(99, c), expected(99, c));
    close(learningRate(100, c), 1e-5);
    for (let s = 0; s < 100; s++) expect(Number.isFinite(learningRate(s, c))).toBe(true);
  });

  test("warmup == total: all steps warm up, the last one at base_lr, no division by zero", () => {
    const c: ScheduleCfg = { base_lr: 2e-3, min_lr: 2e-4, warmup_steps: 10, total_steps: 10 };
    for (let s = 0; s < 10; s++) close(learningRate(s, c), (2e-3 * (s + 1)) / 10);
    close(learningRate(9, c), 2e-3);
    close(learningRate(10, c), 2e-4);
  });

  test("min_lr == base_lr after warmup is constant", () => {
    const c: ScheduleCfg = { base_lr: 5e-4, min_lr: 5e-4, warmup_steps: 3, total_steps: 40 };
    for (let s = 3; s < 45; s++) close(learningRate(s, c), 5e-4);
  });

  test("one step, no warmup: the only step gets base_lr", () => {
    const c: ScheduleCfg = { base_lr: 1e-3, min_lr: 1e-4, warmup_steps: 0, total_steps: 1 };
    close(learningRate(0, c), 1e-3);
    close(learningRate(1, c), 1e-4);
  });
});

describe("the runner follows the schedule", () => {
  test("metrics.jsonl: the train record of step k (k updates done) carries the lr of update k-1", async () => {
    const train = { total_steps: 12, warmup_steps: 3, base_lr: 2e-3, min_lr: 2e-4, log_every: 1, eval_every: 6, ckpt_every: 12 };
    const repo = makeTinyRepo({ pretrain: train });
    const code = await runTraining(
      { phase: "pretrain", configPath: "configs/pretrain.json", device: "cpu", resume: { kind: "none" } },
      { repoRoot: repo.root, out: captureStream(), stop: { requested: null } },
    );
    expect(code).toBe(0);
    const records = readFileSync(join(repo.root, "checkpoints", "metrics.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { kind: string; step: number; lr: number | null });
    const trainRecords = records.filter((r) => r.kind === "train");
    expect(trainRecords.map((r) => r.step)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    for (const r of trainRecords) {
      const want = expected(r.step - 1, train);
      expect(Math.abs(r.lr! - want)).toBeLessThanOrEqual(1e-12);
    }
  });
});
