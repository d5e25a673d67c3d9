/**
 * Interleaved A/B of two settings of the native library in one process, for changes
 * smaller than this VM's run-to-run noise:
 *
 *   bun bench/ab.ts [--shape S1|S2|S3|S4] [--steps 40] [--instances 3] "A_ENV=1 B_ENV=x" "A_ENV=0"
 *
 * Each argument is a list of environment settings (the native options, read by
 * nativeOptions in src/backend/native.ts), where LIB=path instead picks the native
 * library file (another build of it) and THREADS=n the model's thread count (a thread
 * count's speed-up: "THREADS=1" "THREADS=2"). Both models are created in this process,
 * then train on the same batches with their steps alternating A, B, A, B, ... so that
 * slow phases of the machine hit both alike. Prints the median step time of each (with its
 * best and worst instance) and B/A of the medians. (At S4 an instance holds 2 GB of parameters,
 * gradients and AdamW moments before activations: mind the memory with --instances.)
 *
 * Each side runs as several model instances (--instances), all interleaved: one instance
 * can be a few percent slower than another of the very same build for its whole life
 * (where its buffers landed in memory; measured: 1.029x and 0.995x for one library
 * against a copy of itself), which a single pair would report as a difference.
 */
import { NativeModel, nativeOptions, openLibrary } from "../src/backend/native.ts";
import { initParams } from "../src/model/layout.ts";
import { Rng } from "../src/util/random.ts";
import { buildNative } from "../scripts/build-native.ts";
import { shapeNamed } from "./shapes.ts";

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1]! : fallback;
}
const settings = process.argv.slice(2).filter((a, i, all) => !a.startsWith("--") && !all[i - 1]?.startsWith("--"));
if (settings.length !== 2) throw new Error('expected two settings, e.g. "GPT_LANES=1" ""');
const shape = shapeNamed(arg("shape", "S1"));
const steps = Number(arg("steps", "40"));
const instances = Number(arg("instances", "3"));

function open(setting: string): NativeModel {
  const all = setting.split(/\s+/).filter((s) => s !== "").map((s) => s.split("=") as [string, string]);
  const lib = all.find(([k]) => k === "LIB")?.[1];
  const threads = all.find(([k]) => k === "THREADS")?.[1];
  const pairs = all.filter(([k]) => k !== "LIB" && k !== "THREADS");
  const options = nativeOptions({ ...process.env, ...Object.fromEntries(pairs) });
  const m = NativeModel.open(shape.cfg, shape.B, "cpu", lib ? openLibrary(lib) : undefined, options);
  if (threads !== undefined) m.setThreads(Number(threads));
  m.setParams(initParams(shape.cfg, 1));
  m.setOptState(null, null, 0);
  return m;
}

await buildNative({ quiet: true });
// A1, B1, A2, B2, ...: instance i of side k is models[2 i + k]
const models = Array.from({ length: instances }, () => settings.map(open)).flat();
const { cfg, B } = shape;
const n = B * cfg.T;
const rng = new Rng(7);
const x = new Int32Array(n);
const y = new Int32Array(n);
const hp = { lr: 3e-4, weightDecay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, gradClip: 1.0 };
const times: number[][] = models.map(() => []);
for (let s = 0; s < steps + 2; s++) {
  for (let i = 0; i < n; i++) {
    x[i] = rng.below(cfg.V);
    y[i] = rng.below(cfg.V);
  }
  const order = models.map((_, k) => k);
  for (const k of s % 2 === 0 ? order : order.reverse()) {
    const t0 = performance.now();
    models[k]!.trainStep(x, y, hp);
    if (s >= 2) times[k]!.push(performance.now() - t0);
  }
}
const median = (a: number[]) => [...a].sort((p, q) => p - q)[Math.floor(a.length / 2)]!;
const side = (k: number) => times.filter((_, i) => i % 2 === k);
const [ma, mb] = [0, 1].map((k) => median(side(k).flat())) as [number, number];
/** The side's median step over all its instances' steps, with its best and worst instance (each by its median step). */
function report(k: number, m: number): string {
  const instances = side(k).map(median);
  const best = Math.min(...instances).toFixed(1);
  const worst = Math.max(...instances).toFixed(1);
  return `median ${m.toFixed(1)} ms/step (${((n / m) * 1000).toFixed(0)} tok/s), instances best ${best} / worst ${worst} ms (of ${instances.length})`;
}
console.log(`A "${settings[0]}": ${report(0, ma)}`);
console.log(`B "${settings[1]}": ${report(1, mb)}`);
console.log(`B/A time of the medians ${(mb / ma).toFixed(3)} (below 1: B faster)`);
for (const m of models) m.close();
