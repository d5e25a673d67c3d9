import { describe, expect, test } from "bun:test";
import { formatSummary, type PhaseSummary } from "../src/train/summary";
import { TrainStats } from "../src/train/stats";

function phase(over: Partial<PhaseSummary>): PhaseSummary {
  return {
    phase: "pretrain",
    startStep: 0,
    endStep: 20000,
    totalSteps: 20000,
    bestValLoss: 3.21449,
    bestStep: 18000,
    lastValLoss: 3.2201,
    tokensPerStep: 8192,
    session: { steps: 20000, tokens: 20000 * 8192, trainSeconds: 13271.3, wallSeconds: 14000 },
    ...over,
  };
}

describe("run summary", () => {
  test("a pipeline: both phases, wall time, files", () => {
    const text = formatSummary({
      phases: [
        phase({ startStep: 12000, session: { steps: 8000, tokens: 8000 * 8192, trainSeconds: 5309, wallSeconds: 5600 } }),
        phase({ phase: "sft", endStep: 3000, totalSteps: 3000, bestValLoss: 2.5, bestStep: 2400, lastValLoss: 2.6, tokensPerStep: 4096, session: { steps: 3000, tokens: 3000 * 4096, trainSeconds: 1000, wallSeconds: 1100 } }),
      ],
      wallTimeS: 3 * 3600 + 12 * 60 + 5,
      files: [
        { label: "best checkpoint", path: "checkpoints/best.pt" },
        { label: "metrics", path: "checkpoints/metrics.jsonl" },
      ],
    });
    expect(text).toBe(
      [
        "run summary",
        "  pretrain  steps 12000 -> 20000 of 20000 (resumed at 12000)",
        "            best val_loss 3.2145 at step 18000 (last 3.2201)",
        "            tokens seen 163,840,000 (20000 steps x 8,192)",
        "            throughput 12,344 tok/s (mean over this session's 8000 steps, evals and saves excluded)",
        "  sft       steps 0 -> 3000 of 3000",
        "            best val_loss 2.5000 at step 2400 (last 2.6000)",
        "            tokens seen 12,288,000 (3000 steps x 4,096)",
        "            throughput 12,288 tok/s (mean over this session's 3000 steps, evals and saves excluded)",
        "  wall time 3h12m (whole run, time stopped between resumes not counted)",
        "  files",
        "    best checkpoint  checkpoints/best.pt",
        "    metrics          checkpoints/metrics.jsonl",
        "",
      ].join("\n"),
    );
  });

  test("no eval, nothing run, stopped early", () => {
    const text = formatSummary({
      phases: [phase({ bestValLoss: null, bestStep: null, lastValLoss: null, startStep: 5, endStep: 5, session: { steps: 0, tokens: 0, trainSeconds: 0, wallSeconds: 0.1 } })],
      wallTimeS: 42,
      files: [],
      stopped: "interrupted by SIGINT",
    });
    expect(text.split("\n")[0]).toBe("run summary (interrupted by SIGINT)");
    expect(text).toContain("no eval ran");
    expect(text).toContain("throughput - (no step ran in this session)");
    expect(text).toContain("wall time 42s (whole run");
    expect(text).not.toContain("files");
  });

  test("fed from the loop's stats", () => {
    let t = 0;
    const stats = new TrainStats({ totalSteps: 100, startStep: 0, now: () => t });
    for (let s = 1; s <= 100; s++) {
      t += 250;
      stats.step({ step: s, loss: 2, lr: 1e-3, tokens: 1024 });
    }
    const text = formatSummary({ phases: [phase({ endStep: 100, totalSteps: 100, tokensPerStep: 1024, session: stats.session() })], wallTimeS: 25, files: [] });
    expect(text).toContain("tokens seen 102,400 (100 steps x 1,024)");
    expect(text).toContain("throughput 4,096 tok/s (mean over this session's 100 steps");
  });
});
