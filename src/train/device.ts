/**
 * The device of a run, from --device (mps | cpu | auto) and what this machine can do.
 * A Metal device's presence is not enough: mps must pass its self-test
 * (src/backend/selftest.ts) to be used, and every tensor of each phase's model must fit
 * its limits (gpt_check_limits). The probes are injected, so the decision is tested
 * anywhere (tests/device.test.ts).
 */
import type { Device } from "../backend/native.ts";
import type { SelfTestResult } from "../backend/selftest.ts";
import type { ModelCfg } from "../model/config.ts";
import { InputError } from "../errors.ts";

export interface DeviceProbe {
  /** gpt_device_available(mps): this build has the backend and the machine a Metal device. */
  mpsAvailable: boolean;
  platform: NodeJS.Platform;
  /** Runs the mps self-test (bounded in time). */
  selfTest: () => Promise<SelfTestResult>;
  /** null when every tensor of (model, B) fits the device, else which does not (the library's message). */
  limitProblem: (model: ModelCfg, B: number) => string | null;
}

/** A phase's model as its config gives it. */
export interface PhaseShape {
  file: string; // the config file
  model: ModelCfg;
  B: number;
}

export interface DeviceChoice {
  device: Device;
  /** Said at the start of the run when the choice needs explaining (auto falling back to cpu). */
  note: string | null;
}

const SELF_TEST = "its self-test (one training step and an evaluation of a tiny model, compared with the cpu)";

export async function chooseDevice(requested: Device | "auto", phases: PhaseShape[], probe: DeviceProbe): Promise<DeviceChoice> {
  if (requested === "cpu") return { device: "cpu", note: null };
  if (!probe.mpsAvailable) {
    if (requested === "auto") return { device: "cpu", note: null };
    const where = probe.platform === "darwin" ? "was found" : `on ${probe.platform} (mps needs an Apple GPU)`;
    throw new InputError(`--device mps: no Metal device ${where}; use --device cpu`);
  }
  const test = await probe.selfTest();
  if (!test.passed) {
    if (requested === "mps") throw new InputError(`--device mps: the Metal device failed ${SELF_TEST}: ${test.detail}; use --device cpu`);
    return { device: "cpu", note: `device auto: training on the cpu, as the Metal device failed ${SELF_TEST}: ${test.detail}` };
  }
  for (const p of phases) {
    const problem = probe.limitProblem(p.model, p.B);
    if (problem !== null) {
      throw new InputError(
        `${p.file}: the model with B=${p.B} does not fit the mps device: ${problem}; ` +
          `reduce train_cfg.B (or T, V, d_ff), or use --device cpu`,
      );
    }
  }
  return { device: "mps", note: null };
}
