/**
 * How a run picks its device (src/train/device.ts) with injected probes, the self-test's
 * child process (src/backend/selftest.ts: its result, a hang, a crash, a silent exit),
 * and a whole run on auto whose Metal device fails its self-test. Runs anywhere; the
 * real mps self-test is in tests/mps.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { SelfTestResult } from "../src/backend/selftest.ts";
import { deviceSelfTest, runSelfTestInChild } from "../src/backend/selftest.ts";
import { InputError } from "../src/errors.ts";
import type { ModelCfg } from "../src/model/config.ts";
import { chooseDevice, type DeviceProbe, type PhaseShape } from "../src/train/device.ts";
import { runTraining } from "../src/train/run.ts";
import { captureStream, makeTinyRepo } from "./helpers/repo.ts";

const MODEL: ModelCfg = { V: 512, T: 256, C: 384, L: 6, H: 6, d_ff: 1536 };
const PHASES: PhaseShape[] = [
  { file: "configs/pretrain.json", model: MODEL, B: 32 },
  { file: "configs/sft.json", model: MODEL, B: 64 },
];

/** A probe whose answers are given, counting the self-tests it runs. */
function probe(o: { available: boolean; test?: SelfTestResult; tooLarge?: (B: number) => string | null }) {
  const calls = { selfTest: 0, limits: [] as number[] };
  const p: DeviceProbe = {
    mpsAvailable: o.available,
    platform: "darwin",
    selfTest: async () => {
      calls.selfTest++;
      return o.test ?? { passed: true, detail: "agreed" };
    },
    limitProblem: (_model, B) => {
      calls.limits.push(B);
      return o.tooLarge?.(B) ?? null;
    },
  };
  return { p, calls };
}

async function refusal(run: Promise<unknown>): Promise<InputError> {
  const e = await run.then(
    () => null,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(InputError);
  expect((e as InputError).exitCode).toBe(2);
  return e as InputError;
}

describe("--device decides", () => {
  test("cpu: no self-test, no size check", async () => {
    const { p, calls } = probe({ available: true, test: { passed: false, detail: "x" } });
    expect(await chooseDevice("cpu", PHASES, p)).toEqual({ device: "cpu", note: null });
    expect(calls).toEqual({ selfTest: 0, limits: [] });
  });

  test("auto without a Metal device: cpu, quietly, without a self-test", async () => {
    const { p, calls } = probe({ available: false });
    expect(await chooseDevice("auto", PHASES, p)).toEqual({ device: "cpu", note: null });
    expect(calls.selfTest).toBe(0);
  });

  test("auto with a device that passes: mps, after checking every phase's sizes", async () => {
    const { p, calls } = probe({ available: true });
    expect(await chooseDevice("auto", PHASES, p)).toEqual({ device: "mps", note: null });
    expect(calls).toEqual({ selfTest: 1, limits: [32, 64] });
  });

  test("auto with a device that fails its self-test: cpu, and the run says why", async () => {
    const { p, calls } = probe({ available: true, test: { passed: false, detail: "step loss NaN vs cpu 4.16" } });
    const choice = await chooseDevice("auto", PHASES, p);
    expect(choice.device).toBe("cpu");
    expect(choice.note).toContain("training on the cpu");
    expect(choice.note).toContain("failed its self-test");
    expect(choice.note).toContain("step loss NaN vs cpu 4.16");
    expect(calls.limits).toEqual([]); // the mps limits do not matter on the cpu
  });

  test("mps with a device that fails its self-test: exit 2 naming the failure", async () => {
    const { p } = probe({ available: true, test: { passed: false, detail: "the self-test process was killed by SIGABRT" } });
    const e = await refusal(chooseDevice("mps", PHASES, p));
    expect(e.message).toStartWith("--device mps: the Metal device failed its self-test");
    expect(e.message).toContain("killed by SIGABRT");
    expect(e.message).toContain("use --device cpu");
  });

  test("mps without a Metal device: exit 2", async () => {
    const { p, calls } = probe({ available: false });
    const e = await refusal(chooseDevice("mps", PHASES, p));
    expect(e.message).toBe("--device mps: no Metal device was found; use --device cpu");
    expect(calls.selfTest).toBe(0);
    const linux = await refusal(chooseDevice("mps", PHASES, { ...p, platform: "linux" }));
    expect(linux.message).toContain("on linux (mps needs an Apple GPU)");
  });

  for (const requested of ["mps", "auto"] as const) {
    test(`${requested} with a model too large for the device: exit 2 naming the config, the tensor and the limit`, async () => {
      const { p } = probe({ available: true, tooLarge: (B) => (B === 64 ? "the logits (B*T, V) = (16384, 512) takes ..." : null) });
      const e = await refusal(chooseDevice(requested, PHASES, p));
      expect(e.message).toStartWith("configs/sft.json: the model with B=64 does not fit the mps device: the logits (B*T, V)");
      expect(e.message).toContain("or use --device cpu");
    });
  }
});

describe("the self-test in a child process", () => {
  test("cpu against cpu in this process: the same numbers", () => {
    const r = deviceSelfTest("cpu");
    expect(r.passed).toBe(true);
    const m = /step loss ([^\s,]+) vs cpu ([^\s,]+)/.exec(r.detail);
    expect(m).not.toBeNull();
    expect(m![1]).toBe(m![2]);
    expect(Number(m![1])).toBeGreaterThan(3); // ~ln 64 for a fresh model
  });

  test("this program as the child (src/cli.ts with the environment variable) reports a result", async () => {
    const r = await runSelfTestInChild("cpu", { timeoutMs: 60_000 });
    expect(r.detail).toContain("vs cpu");
    expect(r.passed).toBe(true);
  });

  test.skipIf(process.platform === "darwin")("the child's failure is the result (skipped on macOS: a Mac's GPU may pass)", async () => {
    const r = await runSelfTestInChild("mps", { timeoutMs: 60_000 });
    expect(r.passed).toBe(false);
    expect(r.detail).toContain("mps is not available");
  });

  test("a child that hangs is stopped at the time limit", async () => {
    const t0 = performance.now();
    const r = await runSelfTestInChild("mps", { command: ["sleep", "30"], timeoutMs: 300 });
    expect(r).toEqual({ passed: false, detail: "the self-test did not finish within 0.3 s (stopped)" });
    expect(performance.now() - t0).toBeLessThan(10_000);
  });

  test("a child that aborts (as Metal does on a failed assertion) fails the test, with its last words", async () => {
    const r = await runSelfTestInChild("mps", {
      command: ["sh", "-c", "echo \"failed assertion 'total bytes of NDArray > 2**32'\" >&2; kill -ABRT $$"],
    });
    expect(r.passed).toBe(false);
    expect(r.detail).toBe("the self-test process was killed by SIGABRT: failed assertion 'total bytes of NDArray > 2**32'");
  });

  test("a child that exits without a result, or with a damaged one, fails the test", async () => {
    const silent = await runSelfTestInChild("mps", { command: ["sh", "-c", "echo hello; echo oops >&2; exit 3"] });
    expect(silent).toEqual({ passed: false, detail: "the self-test process exited with code 3 and no result: oops" });
    const damaged = await runSelfTestInChild("mps", { command: ["sh", "-c", "echo '{\"passed\": \"yes\"}'"] });
    expect(damaged.passed).toBe(false);
  });
});

test("a stray TRAIN_DEVICE_SELFTEST in the environment is named, not run (exit 2)", () => {
  const r = Bun.spawnSync([process.execPath, join(import.meta.dir, "..", "src", "cli.ts"), "--version"], {
    env: { ...process.env, TRAIN_DEVICE_SELFTEST: "1" },
  });
  expect(r.exitCode).toBe(2);
  expect(r.stderr.toString()).toContain('TRAIN_DEVICE_SELFTEST is set to "1": it is for the device self-test');
  expect(r.stdout.toString()).toBe("");
});

test("a run on auto whose Metal device fails its self-test trains on the cpu and says why", async () => {
  const repo = makeTinyRepo();
  const out = captureStream();
  const { p } = probe({ available: true, test: { passed: false, detail: "the self-test did not finish within 30 s (stopped)" } });
  const code = await runTraining(
    { phase: "pretrain", configPath: "configs/pretrain.json", device: "auto", resume: { kind: "none" } },
    { repoRoot: repo.root, out, stop: { requested: null }, deviceProbe: p },
  );
  expect(code).toBe(0);
  const lines = out.text().split("\n");
  expect(lines[1]).toContain("device auto: training on the cpu");
  expect(lines[1]).toContain("did not finish within 30 s");
  expect(out.text()).toContain("device cpu");
  expect(existsSync(join(repo.root, "checkpoints", "best.pt"))).toBe(true);
});
