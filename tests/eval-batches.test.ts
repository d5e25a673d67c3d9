/**
 * The eval batches of a run are fixed: every eval of a run, and every eval after a stop and
 * resume, computes its loss on the same batches, in the same order: those the run's seed
 * draws from the val caches (src/data/eval.ts), for a pretrain run (val_source wiki) and for
 * the SFT phase of a pipeline (val_source sft, masked targets). Seen directly: the CLI runs
 * with a preload that logs the batch of every NativeModel.evalLoss call
 * (tests/helpers/eval-spy.ts), and the batches are computed here from the config.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { loadPhaseConfig } from "../src/config.ts";
import { evalBatches } from "../src/data/eval.ts";
import { DEFAULT_CACHE_ROOT } from "../src/data/paths.ts";
import { batchDigest, EVAL_SPY_LOG, EVAL_SPY_PRELOAD } from "./helpers/eval-spy.ts";
import { makeTinyRepo } from "./helpers/repo.ts";
import { cli, LiveRun } from "./reliability-helpers.ts";

const SPY = ["--preload", EVAL_SPY_PRELOAD];
const EVAL_BATCHES = 3;

/** The batches (digests) of a phase config's eval, computed from its seed here. */
function expectedEvalBatches(root: string, file: string, phase: "pretrain" | "sft"): string[] {
  const config = loadPhaseConfig(join(root, file), phase, root);
  const { B, seed, eval_batches } = config.train;
  const spec = { phase: config.phase, sources: config.sources, valSource: config.valSource };
  const batches = evalBatches({ root: join(root, DEFAULT_CACHE_ROOT), spec, B, T: config.model.T, seed, modelV: config.model.V, count: eval_batches });
  const digests = batches.map((b) => batchDigest(b.x, b.y));
  expect(new Set(digests).size).toBe(EVAL_BATCHES); // distinct batches: their order is seen too
  return digests;
}

/** The evalLoss calls logged in root since the last read (digests of their batches). */
function takeLoggedCalls(root: string): string[] {
  const path = join(root, EVAL_SPY_LOG);
  const calls = existsSync(path) ? readFileSync(path, "utf8").split("\n").filter(Boolean) : [];
  rmSync(path, { force: true });
  return calls;
}

/**
 * Calls as evals: each a list of indices into the expected batches (-1: a batch that is
 * none of them). A call of batch 0 starts an eval; a lone batch 0 is the soundness probe of
 * a save without an eval (src/train/phase.ts), counted apart.
 */
function asEvals(calls: string[], expected: string[]): { evals: number[][]; probes: number } {
  const groups: number[][] = [];
  for (const digest of calls) {
    const i = expected.indexOf(digest);
    if (i === 0 || groups.length === 0) groups.push([]);
    groups.at(-1)!.push(i);
  }
  const probe = (g: number[]) => g.length === 1 && g[0] === 0;
  return { evals: groups.filter((g) => !probe(g)), probes: groups.filter(probe).length };
}

/** n evals, each of all the eval batches in order. */
function wholeEvals(n: number): number[][] {
  return Array(n).fill(Array.from({ length: EVAL_BATCHES }, (_, i) => i));
}

/** The step a run stopped by SIGINT reports. */
function stoppedStep(stdout: string): number {
  const step = Number(/stopped after step (\d+)/.exec(stdout)?.[1]);
  expect(Number.isInteger(step)).toBe(true);
  return step;
}

describe("the eval batches of a run, before and after a stop and resume", () => {
  test("pretrain: every eval runs on the seed's eval batches of the val stream, all of them, in order", async () => {
    const [steps, evalEvery] = [400, 25];
    const r = makeTinyRepo({ pretrain: { total_steps: steps, ckpt_every: 50, eval_every: evalEvery, log_every: 50, eval_batches: EVAL_BATCHES } });
    const args = ["--phase", "pretrain", "--config", "configs/pretrain.json", "--device", "cpu"];
    const expected = expectedEvalBatches(r.root, "configs/pretrain.json", "pretrain");

    const run = new LiveRun(args, r.root, [], SPY);
    await run.waitFor(/checkpoint step\s+100\/400/); // long enough that the signal lands mid-run
    run.signal("SIGINT");
    const stopped = await run.finish();
    expect(stopped.code).toBe(130);
    const stop = stoppedStep(stopped.stdout);
    expect(stop).toBeLessThan(steps);
    const before = asEvals(takeLoggedCalls(r.root), expected);

    const resumed = cli(args, r.root, SPY);
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toContain(`resumed from checkpoints/latest.pt at step ${stop}`);
    const after = asEvals(takeLoggedCalls(r.root), expected);

    // the eval before training and one every evalEvery steps up to the stop; the rest after it
    expect(before.evals).toEqual(wholeEvals(1 + Math.floor(stop / evalEvery)));
    expect(after.evals).toEqual(wholeEvals(steps / evalEvery - Math.floor(stop / evalEvery)));
    expect(before.probes + after.probes).toBeLessThanOrEqual(1); // the stop's save of latest.pt
  }, 60_000);

  test("sft (in a pipeline): every eval runs on the seed's masked eval examples, all of them, in order", async () => {
    const [steps, evalEvery] = [200, 25];
    const r = makeTinyRepo({
      sft: true,
      pretrain: { total_steps: 10, ckpt_every: 5, eval_every: 5, eval_batches: EVAL_BATCHES },
      sftTrain: { total_steps: steps, ckpt_every: 50, eval_every: evalEvery, log_every: 25, eval_batches: EVAL_BATCHES },
      sftVal: "sft",
    });
    const args = ["--phase", "pipeline", "--config", "configs/pipeline.json", "--device", "cpu"];
    const pretrain = expectedEvalBatches(r.root, "configs/pretrain.json", "pretrain");
    const expected = expectedEvalBatches(r.root, "configs/sft.json", "sft");
    const sftCalls = (calls: string[]) => calls.filter((c) => !pretrain.includes(c));

    const run = new LiveRun(args, r.root, [], SPY);
    await run.waitFor(/\[sft\] checkpoint step\s+50\/200/);
    run.signal("SIGINT");
    const stopped = await run.finish();
    expect(stopped.code).toBe(130);
    const stop = stoppedStep(stopped.stdout);
    expect(stop).toBeLessThan(steps);
    const calls = takeLoggedCalls(r.root);
    // the pretrain phase: its own eval batches, 1 + 10 / 5 whole evals
    expect(asEvals(calls.filter((c) => pretrain.includes(c)), pretrain).evals).toEqual(wholeEvals(3));
    const before = asEvals(sftCalls(calls), expected);

    const again = cli(args, r.root, SPY);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain(`sft: resumed from checkpoints/latest.pt at step ${stop}`);
    const after = asEvals(sftCalls(takeLoggedCalls(r.root)), expected);

    expect(before.evals).toEqual(wholeEvals(1 + Math.floor(stop / evalEvery)));
    expect(after.evals).toEqual(wholeEvals(steps / evalEvery - Math.floor(stop / evalEvery)));
    expect(before.probes + after.probes).toBeLessThanOrEqual(1);
  }, 60_000);
});
