/**
 * npm run demo: builds what is missing (native library, dist/train), prepares the demo
 * caches in demo/ (never data/cache, never checkpoints/), and runs the real pipeline
 * through dist/train with demo/ as REPO_ROOT. Re-running continues an interrupted demo;
 * delete demo/checkpoints to start over.
 */
import { copyFileSync, existsSync, mkdirSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { readMetrics, type MetricsRecord } from "../src/train/metrics.ts";

const root = join(import.meta.dir, "..");
const demo = join(root, "demo");
const bun = process.execPath;

function run(cmd: string[], cwd = root): void {
  const p = Bun.spawnSync(cmd, { cwd, stdout: "inherit", stderr: "inherit" });
  if (p.exitCode !== 0) {
    console.error(`demo: ${cmd.join(" ")} failed (exit ${p.exitCode})`);
    process.exit(p.exitCode ?? 1);
  }
}

/** Newest modification time under a folder (for "build what is missing or stale"). */
function newest(dir: string): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return t;
}

run([bun, "scripts/build-native.ts"]);
const exe = join(root, "dist", "train");
if (!existsSync(exe) || statSync(exe).mtimeMs < Math.max(newest(join(root, "src")), newest(join(root, "native", "build")))) {
  run([bun, "scripts/build-exe.ts"]);
}
if (!existsSync(join(demo, "data", "cache", "sft", "primer_val.bin.meta.json"))) {
  run([bun, "scripts/demo-data.ts", "--out", join(demo, "data", "cache")]);
}
mkdirSync(join(demo, "configs"), { recursive: true });
for (const f of readdirSync(join(root, "configs", "demo"))) copyFileSync(join(root, "configs", "demo", f), join(demo, "configs", f));

const t0 = performance.now();
run([exe, "--phase", "pipeline", "--config", "configs/pipeline.json"], demo);
const seconds = (performance.now() - t0) / 1000;

const evals = readMetrics(join(demo, "checkpoints", "metrics.jsonl")).filter((r) => r.kind === "eval");
const span = (phase: MetricsRecord["phase"]) => {
  const e = evals.filter((r) => r.phase === phase);
  return { first: e[0]?.val_loss ?? NaN, last: e[e.length - 1]?.val_loss ?? NaN, best: Math.min(...e.map((r) => r.val_loss ?? Infinity)) };
};
const pre = span("pretrain");
const sft = span("sft");
const lnV = Math.log(264);
console.log(`\ndemo finished in ${seconds.toFixed(0)} s (this invocation)`);
console.log(`  pretrain val loss (wiki):        ${pre.first.toFixed(4)} -> ${pre.last.toFixed(4)}  (ln V = ${lnV.toFixed(4)}, ${(lnV - pre.last).toFixed(2)} nats below)`);
console.log(`  sft val loss (masked, sft val):  ${sft.first.toFixed(4)} -> ${sft.last.toFixed(4)}  (${(100 * (1 - sft.last / sft.first)).toFixed(1)} % lower)`);
console.log(`  the SFT model: ${join(demo, "checkpoints", "best.pt")}; pretrain: ${join(demo, "checkpoints", "pretrain", "best.pt")}`);
console.log(`  loss curve: ${join(demo, "checkpoints", "loss.svg")}, metrics: ${join(demo, "checkpoints", "metrics.jsonl")}`);
