/**
 * Divergence never costs a checkpoint: a run resumed from a healthy checkpoint with an
 * absurd learning rate stops with exit 1 and a clear message, and every .pt written
 * before keeps its bytes. No checkpoint with a non-finite value or a non-finite loss is
 * written, and best.pt is never replaced by a non-finite eval.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readMetrics } from "../src/train/metrics.ts";
import { makeTinyRepo, type TinyRepo } from "./helpers/repo.ts";
import { cli, finalCheckpoints, snapshot, type CliResult } from "./reliability-helpers.ts";

const PRETRAIN = ["--phase", "pretrain", "--config", "configs/pretrain.json", "--device", "cpu"];
const repos: TinyRepo[] = [];
afterAll(() => {
  for (const r of repos) rmSync(r.root, { recursive: true, force: true });
});

/** The .pt files of checkpoints/ and their hashes. */
function ptSnapshot(root: string): Record<string, string> {
  return Object.fromEntries(Object.entries(snapshot(join(root, "checkpoints"))).filter(([p]) => p.endsWith(".pt")));
}

/**
 * 4 healthy steps (checkpoints at 2 and 4, best.pt), then the same run resumed at step 4
 * with train_cfg changed by `diverging`. Returns the second run and the .pt files before it.
 */
function resumeWith(diverging: Record<string, number>): { r: CliResult; before: Record<string, string>; root: string } {
  const repo = makeTinyRepo({ pretrain: { total_steps: 4, ckpt_every: 2, eval_every: 2 } });
  repos.push(repo);
  expect(cli(PRETRAIN, repo.root).code).toBe(0);
  const before = ptSnapshot(repo.root);
  expect(Object.keys(before).sort()).toEqual(["best.pt", "latest.pt", "step_0000002.pt", "step_0000004.pt"]);
  const path = join(repo.root, "configs", "pretrain.json");
  const config = JSON.parse(readFileSync(path, "utf8"));
  config.train_cfg = { ...config.train_cfg, total_steps: 40, warmup_steps: 0, ...diverging };
  writeFileSync(path, JSON.stringify(config, null, 2));
  return { r: cli(PRETRAIN, repo.root), before, root: repo.root };
}

function expectStoppedCleanly(r: CliResult): void {
  expect(r.code).toBe(1);
  expect(r.stderr.trim().split("\n")).toHaveLength(1);
  expect(r.stderr).not.toContain("    at ");
  expect(r.stdout).toContain("resumed from checkpoints/latest.pt at step 4");
}

describe("an absurd learning rate after 4 healthy steps", () => {
  test("huge but finite weights (lr 1e30): the loss of the weights to be saved is NaN, nothing is written", () => {
    const { r, before, root } = resumeWith({ base_lr: 1e30, min_lr: 1e29, ckpt_every: 1, eval_every: 100 });
    expectStoppedCleanly(r);
    expect(r.stderr).toBe(
      "train: training diverged at step 5: the loss of the weights on a val batch is NaN; no checkpoint was written at this step, " +
        "checkpoints/latest.pt (step 4) is intact. Lower base_lr (or grad_clip) in the config and resume.\n",
    );
    expect(ptSnapshot(root)).toEqual(before);
  }, 30_000);

  test("infinite weights (lr 3e38): the first non-finite value is named, nothing is written", () => {
    const { r, before, root } = resumeWith({ base_lr: 3e38, min_lr: 1e38, ckpt_every: 1, eval_every: 100 });
    expectStoppedCleanly(r);
    expect(r.stderr).toMatch(
      /^train: training diverged at step 5: weight transformer\.wte\.weight\[0\] is (-?Infinity|NaN); no checkpoint was written at this step, checkpoints\/latest\.pt \(step 4\) is intact\. /,
    );
    expect(ptSnapshot(root)).toEqual(before);
  }, 30_000);

  test("a NaN eval at a periodic checkpoint: the val loss is named, nothing is written", () => {
    const { r, before, root } = resumeWith({ base_lr: 1e30, min_lr: 1e29, ckpt_every: 1, eval_every: 1 });
    expectStoppedCleanly(r);
    expect(r.stderr).toStartWith("train: training diverged at step 5: the val loss is NaN; no checkpoint was written at this step");
    expect(ptSnapshot(root)).toEqual(before);
  }, 30_000);

  test("max_nonfinite_steps non-finite steps in a row stop the run; NaN evals in between never replace best.pt", () => {
    const { r, before, root } = resumeWith({ base_lr: 1e30, min_lr: 1e29, ckpt_every: 100, eval_every: 1, max_nonfinite_steps: 2 });
    expectStoppedCleanly(r);
    // step 5 applies the absurd update (its loss is still that of the healthy weights), 6 and 7 are NaN
    expect(r.stdout).toMatch(/\nstep 6: non-finite loss NaN at lr 9\.\d{3}e\+29: update skipped \(1 in a row, limit 2\)\n/);
    expect(r.stdout).toMatch(/\nstep 7: non-finite loss NaN at lr 9\.\d{3}e\+29: update skipped \(2 in a row, limit 2\)\n/);
    expect(r.stdout).toMatch(/eval step\s+6\/40 \| val_loss nan \| best 5\.\d+ \|/);
    expect(r.stderr).toMatch(/^train: training diverged: 2 steps in a row with a non-finite loss NaN \(last at step 7, lr 9\.\d{3}e\+29\); no update was applied, the last checkpoint is intact\./);
    expect(ptSnapshot(root)).toEqual(before);
    expect(finalCheckpoints(join(root, "checkpoints"))).toHaveLength(4);
  }, 30_000);

  test("with no eval, log line or save since: the last applied step's loss is still written to metrics.jsonl", () => {
    const { r, root } = resumeWith({ base_lr: 1e30, min_lr: 1e29, ckpt_every: 100, eval_every: 100, log_every: 100, max_nonfinite_steps: 2 });
    expectStoppedCleanly(r);
    const last = readMetrics(join(root, "checkpoints", "metrics.jsonl")).at(-1)!;
    expect(last).toMatchObject({ kind: "step", step: 5 }); // 6 and 7 were skipped: no record
    expect(Number.isFinite(last.train_loss)).toBe(true);
  }, 30_000);
});
