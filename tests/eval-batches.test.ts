/**
 * The eval batches of a run are fixed: every eval of a run, and every eval after a stop and
 * resume, computes its loss on the same batches, in the same order: those the run's seed
 * draws from the val cache (src/data/eval.ts). Seen directly: the CLI runs with a preload
 * that logs the batch of every NativeModel.evalLoss call (tests/helpers/eval-spy.ts).
 */
import { expect, test } from "bun:test";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { loadPhaseConfig } from "../src/config.ts";
import { evalBatches } from "../src/data/eval.ts";
import { DEFAULT_CACHE_ROOT } from "../src/data/paths.ts";
import { batchDigest, EVAL_SPY_LOG, EVAL_SPY_PRELOAD } from "./helpers/eval-spy.ts";
import { makeTinyRepo } from "./helpers/repo.ts";
import { cli, LiveRun } from "./reliability-helpers.ts";

const PRETRAIN = ["--phase", "pretrain", "--config", "configs/pretrain.json", "--device", "cpu"];
const SPY = ["--preload", EVAL_SPY_PRELOAD];
// Long enough that a signal sent after the checkpoint at step 100 lands mid-run.
const STEPS = 400;
const EVAL_EVERY = 25;
const EVAL_BATCHES = 3;

/** The batches (digests) of the config's eval, computed from the seed here. */
function expectedEvalBatches(root: string): string[] {
  const config = loadPhaseConfig(join(root, "configs/pretrain.json"), "pretrain", root);
  const { B, seed, eval_batches } = config.train;
  const spec = { phase: config.phase, sources: config.sources, valSource: config.valSource };
  const batches = evalBatches({ root: join(root, DEFAULT_CACHE_ROOT), spec, B, T: config.model.T, seed, modelV: config.model.V, count: eval_batches });
  return batches.map((b) => batchDigest(b.x, b.y));
}

/**
 * The evalLoss calls logged in root, as evals: each a list of indices into the expected
 * batches (-1: a batch that is not one of them). A call of batch 0 starts an eval; a lone
 * batch 0 is the soundness probe of a save without an eval (src/train/phase.ts).
 */
function loggedEvals(root: string, expected: string[]): { evals: number[][]; probes: number } {
  const path = join(root, EVAL_SPY_LOG);
  const calls = existsSync(path) ? readFileSync(path, "utf8").split("\n").filter(Boolean) : [];
  rmSync(path, { force: true });
  const groups: number[][] = [];
  for (const digest of calls) {
    const i = expected.indexOf(digest);
    if (i === 0 || groups.length === 0) groups.push([]);
    groups.at(-1)!.push(i);
  }
  const probes = groups.filter((g) => g.length === 1 && g[0] === 0).length;
  return { evals: groups.filter((g) => !(g.length === 1 && g[0] === 0)), probes };
}

test("every eval of a run, before and after a stop and resume, runs on the seed's eval batches, all of them, in order", async () => {
  const r = makeTinyRepo({
    pretrain: { total_steps: STEPS, ckpt_every: 50, eval_every: EVAL_EVERY, log_every: 50, eval_batches: EVAL_BATCHES },
  });
  const expected = expectedEvalBatches(r.root);
  expect(new Set(expected).size).toBe(EVAL_BATCHES); // distinct batches: the order is seen too
  const whole = Array.from({ length: EVAL_BATCHES }, (_, i) => i);

  const run = new LiveRun(PRETRAIN, r.root, [], SPY);
  await run.waitFor(/checkpoint step\s+100\/400/);
  run.signal("SIGINT");
  const stopped = await run.finish();
  expect(stopped.code).toBe(130);
  const stopStep = Number(/stopped after step (\d+)/.exec(stopped.stdout)?.[1]);
  expect(stopStep).toBeGreaterThanOrEqual(100);
  expect(stopStep).toBeLessThan(STEPS);
  const before = loggedEvals(r.root, expected);

  const resumed = cli(PRETRAIN, r.root, SPY);
  expect(resumed.code).toBe(0);
  expect(resumed.stdout).toContain(`resumed from checkpoints/latest.pt at step ${stopStep}`);
  const after = loggedEvals(r.root, expected);

  // the eval before training, then one every EVAL_EVERY steps up to the stop; the rest after it
  expect(before.evals).toEqual(Array(1 + Math.floor(stopStep / EVAL_EVERY)).fill(whole));
  expect(after.evals).toEqual(Array(STEPS / EVAL_EVERY - Math.floor(stopStep / EVAL_EVERY)).fill(whole));
  expect(before.probes + after.probes).toBeLessThanOrEqual(1); // the stop's save of latest.pt
}, 60_000);
