/**
 * Whether a device really trains, decided by doing it: a tiny model takes one AdamW step
 * and one evaluation on the device and on the CPU from the same weights and batch, and
 * the two must agree. A Metal device that is present need not work: a virtual machine's
 * paravirtual GPU (CI runners) fails its first allocations, returns garbage, hangs, or
 * aborts the process inside Metal. So the test runs in a child process of this program
 * (runSelfTestInChild), bounded in time: a hang or a crash costs a bounded wait and a
 * message, never the run. src/train/device.ts turns the result into the device.
 */
import { join } from "node:path";
import type { ModelCfg } from "../model/config.ts";
import { initParams } from "../model/layout.ts";
import { Rng } from "../util/random.ts";
import { NativeModel, nativeOptions, openLibrary, type Device, type HParams, type NativeLibrary } from "./native.ts";

export interface SelfTestResult {
  passed: boolean;
  /** What was compared, or what went wrong. */
  detail: string;
}

// Every op of the real step (embedding, attention with 2 heads, MLP, LayerNorm, the loss,
// autodiff, clipping, AdamW with decay) at a size that builds and runs in well under a second.
const CFG: ModelCfg = { V: 64, T: 16, C: 32, L: 2, H: 2, d_ff: 64 };
const B = 2;
const HP: HParams = { lr: 1e-2, weightDecay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, gradClip: 1.0 };
// The backends agree to ~1e-5 on this model (tests/mps.test.ts holds them to 1e-4 on
// the loss); a device that does not work is off by far more, or not finite.
const TOLERANCE = 1e-3;

/** The CPU's numbers and the device's for one step and one evaluation. */
interface Run {
  loss: number;
  gradNorm: number;
  applied: boolean;
  evalLoss: number; // after the step: the update is in it
}

function runOn(device: Device, lib: NativeLibrary): Run {
  const params = initParams(CFG, 1);
  const rng = new Rng(17, 0x5e1f);
  const x = Int32Array.from({ length: B * CFG.T }, () => rng.below(CFG.V));
  const y = Int32Array.from({ length: B * CFG.T }, () => rng.below(CFG.V));
  const model = NativeModel.open(CFG, B, device, lib, nativeOptions());
  try {
    model.setParams(params);
    model.setOptState(null, null, 0);
    const step = model.trainStep(x, y, HP);
    return { loss: step.loss, gradNorm: step.gradNorm, applied: step.applied, evalLoss: model.evalLoss(x, y) };
  } finally {
    model.close();
  }
}

function agree(a: number, b: number): boolean {
  return Number.isFinite(a) && Number.isFinite(b) && Math.abs(a - b) <= TOLERANCE * Math.max(Math.abs(b), 1e-6);
}

/** The self-test of `device` in this process (the child's work). */
export function deviceSelfTest(device: Device, lib: NativeLibrary = openLibrary()): SelfTestResult {
  let got: Run, ref: Run;
  try {
    ref = runOn("cpu", lib);
    got = runOn(device, lib);
  } catch (e) {
    return { passed: false, detail: (e as Error).message };
  }
  const f = (v: number) => v.toPrecision(6);
  const detail =
    `step loss ${f(got.loss)} vs cpu ${f(ref.loss)}, grad norm ${f(got.gradNorm)} vs ${f(ref.gradNorm)}, ` +
    `eval loss after the step ${f(got.evalLoss)} vs ${f(ref.evalLoss)}${got.applied ? "" : ", the update was not applied"}`;
  const passed = got.applied && agree(got.loss, ref.loss) && agree(got.gradNorm, ref.gradNorm) && agree(got.evalLoss, ref.evalLoss);
  return { passed, detail: passed ? detail : `${detail} (expected agreement within ${TOLERANCE} relative)` };
}

/** The environment variable that makes this program a self-test child: {"device", "library"} as JSON. */
export const SELFTEST_ENV = "TRAIN_DEVICE_SELFTEST";

/** The child's side: runs the self-test the environment asks for, prints its result as one JSON line. */
export function selfTestChild(embeddedLibrary?: string): number {
  let request: { device: Device; library?: string };
  try {
    request = JSON.parse(process.env[SELFTEST_ENV]!);
    if (request.device !== "mps" && request.device !== "cpu") throw new Error();
  } catch {
    console.error(`train: ${SELFTEST_ENV} is set to ${JSON.stringify(process.env[SELFTEST_ENV])}: it is for the device self-test's child process ({"device": "mps"}); unset it to run train`);
    return 2;
  }
  const { device, library } = request;
  const result = deviceSelfTest(device, openLibrary(library ?? embeddedLibrary));
  process.stdout.write(`${JSON.stringify(result)}\n`);
  return 0;
}

/** This program as a command: the executable itself when compiled, else Bun running src/cli.ts. */
function thisProgram(): string[] {
  const compiled = import.meta.path.startsWith("/$bunfs/") || import.meta.path.startsWith("B:/~BUN/");
  return compiled ? [process.execPath] : [process.execPath, join(import.meta.dir, "..", "cli.ts")];
}

export const SELFTEST_TIMEOUT_MS = 30_000;

export interface ChildOptions {
  /** The native library the child opens (default: the child's own default). */
  libraryPath?: string;
  timeoutMs?: number;
  /** The command to run (default: this program); tests give another. */
  command?: string[];
}

/** The last lines of a child's stderr, for a message. */
function tail(text: string): string {
  const lines = text.trim().split("\n").filter((l) => l.trim() !== "");
  return lines.slice(-3).join(" | ");
}

/**
 * Runs deviceSelfTest(device) in a child process; a child that crashes, exits without a
 * result, or does not finish within timeoutMs (then it is killed) fails the test.
 */
export async function runSelfTestInChild(device: Device, options: ChildOptions = {}): Promise<SelfTestResult> {
  const timeoutMs = options.timeoutMs ?? SELFTEST_TIMEOUT_MS;
  const proc = Bun.spawn(options.command ?? thisProgram(), {
    env: { ...process.env, [SELFTEST_ENV]: JSON.stringify({ device, library: options.libraryPath }) },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  // read while it runs: a child blocked on a full pipe would look like a hang
  const output = Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timedOut = await Promise.race([
    proc.exited.then(() => false),
    new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(true), timeoutMs);
    }),
  ]);
  clearTimeout(timer);
  if (timedOut) {
    proc.kill("SIGKILL");
    await Promise.all([proc.exited, output]);
    return { passed: false, detail: `the self-test did not finish within ${timeoutMs / 1000} s (stopped)` };
  }
  const [stdout, stderr] = await output;
  const why = tail(stderr);
  if (proc.signalCode) return { passed: false, detail: `the self-test process was killed by ${proc.signalCode}${why ? `: ${why}` : ""}` };
  const line = stdout.trim().split("\n").pop() ?? "";
  try {
    const r = JSON.parse(line) as SelfTestResult;
    if (proc.exitCode === 0 && typeof r.passed === "boolean" && typeof r.detail === "string") return { passed: r.passed, detail: r.detail };
  } catch {}
  return { passed: false, detail: `the self-test process exited with code ${proc.exitCode} and no result${why ? `: ${why}` : ""}` };
}
