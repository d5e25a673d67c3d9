/**
 * The spec's three acceptance tests (pretrain smoke, resume smoke, SFT masking smoke),
 * run in-process on tiny CPU models and tiny fake caches.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { NativeModel } from "../src/backend/native.ts";
import { loadCheckpoint } from "../src/checkpoint/checkpoint.ts";
import { sftMask, IGNORE_INDEX } from "../src/data/mask.ts";
import { ASST_ID, EOT_ID, PAD_ID, USER_ID } from "../src/data/tokenizer.ts";
import { initParams } from "../src/model/layout.ts";
import { runTraining, type RunRequest } from "../src/train/run.ts";
import type { StopSignal } from "../src/train/stop.ts";
import { captureStream, makeTinyRepo, TINY_MODEL } from "./helpers/repo.ts";

const never: StopSignal = { requested: null };

async function run(root: string, req: Partial<RunRequest> & Pick<RunRequest, "phase" | "configPath">, stop: StopSignal = never) {
  const out = captureStream();
  const code = await runTraining({ device: "cpu", resume: { kind: "auto" }, ...req }, { repoRoot: root, out, stop });
  return { code, text: out.text() };
}

function ckpt(root: string, name: string) {
  return loadCheckpoint(join(root, "checkpoints", name), TINY_MODEL);
}

describe("pretrain smoke (cpu)", () => {
  test("10 steps: finite falling loss, step_*.pt, latest.pt and best.pt at the configured cadence", async () => {
    const repo = makeTinyRepo();
    const { code, text } = await run(repo.root, { phase: "pretrain", configPath: "configs/pretrain.json" });
    expect(code).toBe(0);
    for (const f of ["step_0000005.pt", "step_0000010.pt", "latest.pt", "best.pt"]) {
      expect(existsSync(join(repo.root, "checkpoints", f))).toBe(true);
    }
    expect(existsSync(join(repo.root, "checkpoints", "step_0000001.pt"))).toBe(false);
    const latest = ckpt(repo.root, "latest.pt");
    expect(latest.step).toBe(10);
    expect(Number.isFinite(latest.bestValLoss!)).toBe(true);
    // the val loss after 10 steps is below the loss at init (ln V for a fresh GPT-2 init)
    expect(latest.bestValLoss!).toBeLessThan(Math.log(TINY_MODEL.V));
    expect(text).toContain("pretrain");
  });
});

describe("resume smoke", () => {
  test("5 steps, stop, resume, 5 more == 10 uninterrupted steps, to the byte", async () => {
    const straight = makeTinyRepo();
    expect((await run(straight.root, { phase: "pretrain", configPath: "configs/pretrain.json" })).code).toBe(0);

    const resumed = makeTinyRepo();
    const stopAfter5: StopSignal = {
      get requested() {
        return existsSync(join(resumed.root, "checkpoints", "step_0000005.pt")) ? "SIGINT" : null;
      },
    };
    const first = await run(resumed.root, { phase: "pretrain", configPath: "configs/pretrain.json" }, stopAfter5).catch((e) => e);
    expect((first as Error).name).toBe("Interrupted");
    expect(ckpt(resumed.root, "latest.pt").step).toBe(5);
    expect(existsSync(join(resumed.root, "checkpoints", "step_0000010.pt"))).toBe(false);

    const second = await run(resumed.root, { phase: "pretrain", configPath: "configs/pretrain.json" });
    expect(second.code).toBe(0);
    expect(second.text).toContain("resumed from checkpoints/latest.pt at step 5");
    const a = ckpt(straight.root, "latest.pt");
    const b = ckpt(resumed.root, "latest.pt");
    expect(b.step).toBe(10);
    expect(ckpt(resumed.root, "step_0000005.pt").step).toBe(5);
    expect(ckpt(resumed.root, "step_0000010.pt").step).toBe(10);
    expect(Buffer.from(b.params.buffer, b.params.byteOffset, b.params.byteLength).equals(Buffer.from(a.params.buffer, a.params.byteOffset, a.params.byteLength))).toBe(true);
    expect(b.opt!.step).toBe(a.opt!.step);
    expect(Buffer.from(b.opt!.m.buffer, b.opt!.m.byteOffset, b.opt!.m.byteLength).equals(Buffer.from(a.opt!.m.buffer, a.opt!.m.byteOffset, a.opt!.m.byteLength))).toBe(true);
    expect(Buffer.from(b.opt!.v.buffer, b.opt!.v.byteOffset, b.opt!.v.byteLength).equals(Buffer.from(a.opt!.v.buffer, a.opt!.v.byteOffset, a.opt!.v.byteLength))).toBe(true);
    // the whole file too: same config, step, best val loss, tensors
    expect(readFileSync(join(resumed.root, "checkpoints/latest.pt")).equals(readFileSync(join(straight.root, "checkpoints/latest.pt")))).toBe(true);
  });

  test("a finished run re-run says so and exits 0", async () => {
    const repo = makeTinyRepo({ pretrain: { total_steps: 3, ckpt_every: 3, eval_every: 3 } });
    expect((await run(repo.root, { phase: "pretrain", configPath: "configs/pretrain.json" })).code).toBe(0);
    const before = readFileSync(join(repo.root, "checkpoints/latest.pt"));
    const again = await run(repo.root, { phase: "pretrain", configPath: "configs/pretrain.json" });
    expect(again.code).toBe(0);
    expect(again.text).toContain("already finished");
    expect(readFileSync(join(repo.root, "checkpoints/latest.pt")).equals(before)).toBe(true);
  });
});

describe("sft masking smoke", () => {
  test("the masked loss is the mean CE over exactly the unmasked positions", () => {
    const cfg = TINY_MODEL;
    const B = 2;
    const T = cfg.T;
    // two rows of T+1 tokens with a prompt, an answer between <|asst|> and <|eot|>, padding
    const rows = [
      [USER_ID, 10, 11, 12, ASST_ID, 40, 41, 42, EOT_ID, USER_ID, 13, ASST_ID, 43, EOT_ID, PAD_ID, PAD_ID, PAD_ID],
      [USER_ID, 20, 21, ASST_ID, 50, 51, 52, 53, 54, 55, EOT_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID],
    ];
    const x = new Int32Array(B * T);
    const y = new Int32Array(B * T);
    rows.forEach((r, b) => {
      x.set(r.slice(0, T), b * T);
      y.set(r.slice(1, T + 1), b * T);
    });
    const yMasked = sftMask(x, y, T, { asstId: ASST_ID, eotId: EOT_ID, padId: PAD_ID });
    // by hand: the targets after <|asst|> up to and including <|eot|>
    const expectedCounted = [
      [4, 5, 6, 7, 11, 12], // row 0 predicts 40 41 42 EOT, then 43 EOT
      [3, 4, 5, 6, 7, 8, 9], // row 1 predicts 50..55 EOT
    ];
    const counted: number[][] = [[], []];
    yMasked.forEach((t, i) => t !== IGNORE_INDEX && counted[Math.floor(i / T)]!.push(i % T));
    expect(counted).toEqual(expectedCounted);

    const model = NativeModel.open(cfg, B, "cpu");
    try {
      model.setParams(initParams(cfg, 3));
      const masked = model.evalLoss(x, yMasked);
      // manual computation: each counted position's CE alone, then their mean
      const single = new Int32Array(B * T);
      let sum = 0;
      let n = 0;
      for (let i = 0; i < B * T; i++) {
        if (yMasked[i] === IGNORE_INDEX) continue;
        single.fill(IGNORE_INDEX);
        single[i] = yMasked[i]!;
        sum += model.evalLoss(x, single);
        n++;
      }
      expect(n).toBe(13);
      expect(Math.abs(masked - sum / n) / (sum / n)).toBeLessThan(1e-5);
      // and it differs from the unmasked loss over all positions
      expect(Math.abs(model.evalLoss(x, y) - masked)).toBeGreaterThan(1e-4);
    } finally {
      model.close();
    }
  });
});
