/**
 * Quick native training throughput at one shape (default S2) with the per-op profile.
 *
 *   bun bench/quick-step.ts [--steps 5] [--threads 2] [--shape S1|S2|S3] [--device cpu|mps]
 * Prints tokens/s of the best and the median timed step, and the profile of the
 * timed steps with --profile (which runs the script again with GPT_PROFILE=1).
 */
import { NativeModel } from "../src/backend/native.ts";
import { initParams } from "../src/model/layout.ts";
import { Rng } from "../src/util/random.ts";
import { buildNative } from "../scripts/build-native.ts";
import { shapeNamed } from "./shapes.ts";

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1]! : fallback;
}

const shape = shapeNamed(arg("shape", "S2"));
const steps = Number(arg("steps", "5"));
const threads = Number(arg("threads", "0"));
const device = arg("device", "cpu") as "cpu" | "mps";
const profile = process.argv.includes("--profile");
if (profile && process.env.GPT_PROFILE !== "1") {
  // NativeModel.open reads GPT_PROFILE from the environment (nativeOptions): re-run with it set
  const p = Bun.spawnSync([process.execPath, ...process.argv.slice(1)], {
    env: { ...process.env, GPT_PROFILE: "1" },
    stdout: "inherit",
    stderr: "inherit",
  });
  process.exit(p.exitCode ?? 1);
}

await buildNative({ quiet: true });
const { cfg, B } = shape;
const model = NativeModel.open(cfg, B, device);
if (threads > 0) model.setThreads(threads);
model.setParams(initParams(cfg, 1));
model.setOptState(null, null, 0);
const rng = new Rng(7);
const n = B * cfg.T;
const x = new Int32Array(n);
const y = new Int32Array(n);
const hp = { lr: 3e-4, weightDecay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, gradClip: 1.0 };

const times: number[] = [];
const cpuTimes: number[] = []; // process CPU seconds per step: a load-independent view on a shared machine
for (let s = 0; s <= steps; s++) {
  for (let i = 0; i < n; i++) {
    x[i] = rng.below(cfg.V);
    y[i] = rng.below(cfg.V);
  }
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const r = model.trainStep(x, y, hp);
  const dt = (performance.now() - t0) / 1000;
  const c1 = process.cpuUsage(c0);
  const cpu = (c1.user + c1.system) / 1e6;
  if (s === 0) {
    model.profileReport(); // drop the warm-up step's profile
    continue;
  }
  times.push(dt);
  cpuTimes.push(cpu);
  console.log(
    `step ${s}: loss ${r.loss.toFixed(4)} norm ${r.gradNorm.toFixed(3)} ${dt.toFixed(3)} s ${(n / dt).toFixed(0)} tok/s, cpu ${cpu.toFixed(3)} s`,
  );
}
times.sort((a, b) => a - b);
const best = times[0]!;
const median = times[Math.floor(times.length / 2)]!;
console.log(`${shape.name} B=${B} ${device}: best ${(n / best).toFixed(0)} tok/s, median ${(n / median).toFixed(0)} tok/s over ${steps} steps`);
if (device === "cpu") {
  // what the step would take with every thread on its own idle core
  const used = threads > 0 ? threads : navigator.hardwareConcurrency;
  const cpuBest = Math.min(...cpuTimes) / used;
  console.log(`  cpu-time view: ${(cpuTimes.reduce((a, b) => a + b, 0) / cpuTimes.length).toFixed(3)} cpu-s/step, ${(n / cpuBest).toFixed(0)} tok/s if ${used} idle cores`);
}
if (profile) {
  const report = model.profileReport().trim();
  if (!report) throw new Error("the native library returned no profile (GPT_PROFILE=1 not seen at gpt_create)");
  const lines = report
    .split("\n")
    .map((l) => l.split(" "))
    .map(([name, sec]) => [name!, Number(sec) / steps] as const);
  const total = lines.reduce((a, [, s]) => a + s, 0);
  for (const [name, s] of [...lines].sort((a, b) => b[1] - a[1])) {
    console.log(`  ${name.padEnd(32)} ${(s * 1000).toFixed(1).padStart(8)} ms/step ${((100 * s) / total).toFixed(1).padStart(5)}%`);
  }
  console.log(`  ${"total".padEnd(32)} ${(total * 1000).toFixed(1).padStart(8)} ms/step`);
}
model.close();
