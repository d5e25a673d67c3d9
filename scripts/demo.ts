/**
 * npm run demo: builds what is missing (native library, dist/train), prepares the demo
 * caches in demo/ (never data/cache, never checkpoints/), and runs the real pipeline
 * through dist/train with demo/ as REPO_ROOT. Re-running continues an interrupted demo;
 * delete demo/checkpoints to start over.
 */
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { NativeModel } from "../src/backend/native.ts";
import { loadCheckpoint } from "../src/checkpoint/checkpoint.ts";
import { checkAnswer, HELDOUT_FILE, type Task } from "../src/prepare/tasks.ts";
import { generate } from "../src/sample/decoder.ts";
import { findTokenizer } from "../src/sample/tokenizer.ts";
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
if (!existsSync(join(demo, "data", "cache", "sft", "primer_val.bin.meta.json")) || !existsSync(join(demo, "data", HELDOUT_FILE))) {
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

/** Greedy replies of a checkpoint to the tasks, each asked as `train sample --chat` asks. */
function answers(checkpoint: string, tasks: readonly Task[]): string[] {
  const ck = loadCheckpoint(checkpoint);
  const tok = findTokenizer(checkpoint, null, ck.modelCfg.V);
  if (tok === null) throw new Error(`no tokenizer found for ${checkpoint}`);
  const model = NativeModel.open(ck.modelCfg, 1);
  try {
    model.setParams(ck.params);
    return tasks.map((t) => {
      const prompt = Int32Array.from([tok.specials.user, ...tok.encode(t.instruction), tok.specials.asst]);
      const ids = generate(model, prompt, { temperature: 0, topK: 0, seed: 0, maxNewTokens: 24, stopId: tok.specials.eot });
      const text = tok.streamDecoder();
      return ids.filter((id) => id !== tok.specials.eot).map((id) => text.push(id)).join("") + text.flush();
    });
  } finally {
    model.close();
  }
}

const held = readFileSync(join(demo, "data", HELDOUT_FILE), "utf8").trim().split("\n").map((l) => JSON.parse(l) as Task);
const t1 = performance.now();
const preBest = join(demo, "checkpoints", "pretrain", "best.pt");
const sftBest = join(demo, "checkpoints", "best.pt");
const preReplies = answers(preBest, held);
const sftReplies = answers(sftBest, held);
const accuracy = (replies: string[]) => replies.filter((r, i) => checkAnswer(held[i]!, r)).length;
const [preRight, sftRight] = [accuracy(preReplies), accuracy(sftReplies)];
console.log(`\nheld-out tasks (${held.length}, none asked in the SFT data), greedy answers, exact match (${((performance.now() - t1) / 1000).toFixed(1)} s):`);
console.log(`  pretrain best: ${preRight}/${held.length} = ${((100 * preRight) / held.length).toFixed(1)} %`);
console.log(`  SFT best:      ${sftRight}/${held.length} = ${((100 * sftRight) / held.length).toFixed(1)} %`);
const kinds = [...new Set(held.map((t) => t.kind))];
const byKind = kinds.map((k) => {
  const idx = held.map((t, i) => (t.kind === k ? i : -1)).filter((i) => i >= 0);
  return `${k} ${idx.filter((i) => checkAnswer(held[i]!, sftReplies[i]!)).length}/${idx.length}`;
});
console.log(`  SFT by kind:   ${byKind.join(", ")}`);
const shown = [...new Set(held.map((t) => t.kind))].slice(0, 3).map((k) => held.findIndex((t) => t.kind === k));
for (const i of shown) {
  console.log(`  > ${held[i]!.instruction}\n    SFT: ${JSON.stringify(sftReplies[i])}  (expected ${JSON.stringify(held[i]!.answer)}: ${checkAnswer(held[i]!, sftReplies[i]!) ? "right" : "wrong"})`);
}
console.log(`  ask it yourself: dist/train sample --checkpoint ${sftBest} --chat --temperature 0 --prompt "What is 12 + 7?"`);
