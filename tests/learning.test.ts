/**
 * The runner really learns (a few seconds on a CPU, tiny model, repetitive fake corpus):
 *  - pretrain: val loss far below ln V, and below the best loss any model that sees only the
 *    current token can reach on the very eval batches (so attention over the context works);
 *  - sft: masked val loss below the best loss any predictor that ignores the prompt can reach
 *    on the eval batches (so the model reads the question to answer it).
 * The bounds are empirical conditional entropies over the eval batches of the run itself:
 * the in-sample optimum, a lower bound for every predictor that uses only that context.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { loadCheckpoint } from "../src/checkpoint/checkpoint.ts";
import { loadPhaseConfig } from "../src/config.ts";
import { IGNORE_INDEX } from "../src/data/mask.ts";
import { ASST_ID } from "../src/data/tokenizer.ts";
import type { Batch } from "../src/train/loop.ts";
import { openPhaseData } from "../src/train/phase-data.ts";
import { runTraining } from "../src/train/run.ts";
import { captureStream, makeTinyRepo, TINY_MODEL } from "./helpers/repo.ts";


/** Mean of -ln p(target | context) under the empirical distribution of (context, target) pairs. */
function conditionalEntropy(pairs: Array<[string, number]>): number {
  const byContext = new Map<string, Map<number, number>>();
  for (const [c, t] of pairs) {
    const m = byContext.get(c) ?? new Map<number, number>();
    m.set(t, (m.get(t) ?? 0) + 1);
    byContext.set(c, m);
  }
  let h = 0;
  for (const m of byContext.values()) {
    const n = [...m.values()].reduce((a, b) => a + b, 0);
    for (const k of m.values()) h -= k * Math.log(k / n);
  }
  return h / pairs.length;
}

/** (current token, target) over every counted position. */
function currentTokenPairs(batches: readonly Batch[]): Array<[string, number]> {
  const pairs: Array<[string, number]> = [];
  for (const b of batches) b.y.forEach((t, j) => t !== IGNORE_INDEX && pairs.push([String(b.x[j]), t]));
  return pairs;
}

/** (answer so far, target): what a predictor that ignores the prompt can know. */
function promptBlindPairs(batches: readonly Batch[], T: number): Array<[string, number]> {
  const pairs: Array<[string, number]> = [];
  for (const b of batches) {
    for (let j = 0; j < b.y.length; j++) {
      if (b.y[j] === IGNORE_INDEX) continue;
      const rowStart = j - (j % T);
      let k = j;
      while (k >= rowStart && b.x[k] !== ASST_ID) k--;
      const answerSoFar = Array.from(b.x.subarray(k + 1, j + 1)).join(",");
      pairs.push([`${k >= rowStart ? "" : "?"}${answerSoFar}`, b.y[j]!]);
    }
  }
  return pairs;
}

function evalLosses(root: string, phase: string): Map<number, number> {
  const lines = readFileSync(join(root, "checkpoints", "metrics.jsonl"), "utf8").trim().split("\n");
  const evals = lines.map((l) => JSON.parse(l)).filter((r) => r.kind === "eval" && r.phase === phase);
  return new Map(evals.map((r) => [r.step as number, r.val_loss as number]));
}

const lnV = Math.log(TINY_MODEL.V);
const fast = { B: 8, base_lr: 1e-2, min_lr: 1e-3, warmup_steps: 10, eval_batches: 4, log_every: 50 };

describe("learning on a repetitive corpus", () => {
  test("pretrain, 300 steps: val loss < 0.5 ln V and below the best current-token-only loss", async () => {
    const steps = 300;
    const repo = makeTinyRepo({ pretrain: { ...fast, total_steps: steps, eval_every: 100, ckpt_every: steps } });
    const code = await runTraining(
      { phase: "pretrain", configPath: "configs/pretrain.json", device: "cpu", resume: { kind: "none" } },
      { repoRoot: repo.root, out: captureStream(), stop: { requested: null } },
    );
    expect(code).toBe(0);
    const val = evalLosses(repo.root, "pretrain");
    expect(Math.abs(val.get(0)! - lnV)).toBeLessThan(0.2); // GPT-2 init: about uniform
    const final = val.get(steps)!;
    expect(final).toBeLessThan(0.5 * lnV);
    expect(val.get(100)!).toBeLessThan(val.get(0)!);
    expect(final).toBeLessThan(val.get(100)!);

    const config = loadPhaseConfig("configs/pretrain.json", "pretrain", repo.root);
    const bound = conditionalEntropy(currentTokenPairs(openPhaseData(config, repo.root).evalBatches));
    expect(bound).toBeGreaterThan(0.5); // the corpus is not trivially predictable from one byte
    expect(final).toBeLessThan(bound);
    // best.pt holds that loss
    expect(loadCheckpoint(join(repo.root, "checkpoints", "best.pt")).bestValLoss).toBeCloseTo(Math.min(...val.values()), 6);
  });

  // 400 steps: at 200 the answers are only half learned and the result depends on the init
  test("sft from scratch, 400 steps: masked val loss below the best prompt-blind loss", async () => {
    const steps = 400;
    const repo = makeTinyRepo({ sft: true, sftVal: "sft", sftTrain: { ...fast, total_steps: steps, eval_every: 100, ckpt_every: steps } });
    const sft = JSON.parse(readFileSync(join(repo.root, "configs/sft.json"), "utf8"));
    repo.writeConfig("sft.json", { ...sft, init_from: "none" });
    const code = await runTraining(
      { phase: "sft", configPath: "configs/sft.json", device: "cpu", resume: { kind: "none" } },
      { repoRoot: repo.root, out: captureStream(), stop: { requested: null } },
    );
    expect(code).toBe(0);
    const val = evalLosses(repo.root, "sft");
    const final = val.get(steps)!;
    expect(final).toBeLessThan(0.5 * lnV);

    const config = loadPhaseConfig("configs/sft.json", "sft", repo.root);
    const bound = conditionalEntropy(promptBlindPairs(openPhaseData(config, repo.root).evalBatches, TINY_MODEL.T));
    expect(bound).toBeGreaterThan(0.5);
    expect(final).toBeLessThan(bound);
  });
});
