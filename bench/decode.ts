/**
 * Decoding benchmark (issue 20): tokens/s of `train sample`'s decoding (src/sample/decoder.ts
 * over the native KV cache) against PyTorch decoding the same checkpoint with a KV cache
 * (interop/torch_decode.py bench), at the S1 and S2 shapes, batch 1, greedy, the same
 * 16-token prompt, T - 16 new tokens (no window slide), the same thread count.
 *   bun bench/decode.ts [--shapes S1,S2] [--rounds 5] [--threads N]
 * Rounds are interleaved (ours, then PyTorch, in every round), each side is judged by its
 * median round; the ratio is of medians. Both sides must make the same greedy ids.
 * Run by bench/bench.ts after the training rows.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { NativeModel } from "../src/backend/native.ts";
import { loadCheckpoint, saveCheckpoint } from "../src/checkpoint/checkpoint.ts";
import { initParams } from "../src/model/layout.ts";
import { generate } from "../src/sample/decoder.ts";
import { shapeNamed, type Shape } from "./shapes.ts";

const PYTHON = process.env.BENCH_PYTHON ?? "/usr/bin/python3";
const PROMPT = 16;

interface Side {
  tokensPerS: number;
  ids: number[];
}

function promptFor(V: number): number[] {
  return Array.from({ length: PROMPT }, (_, i) => (i * 31 + 7) % V);
}

/** Ours, in this child process: decode rate of the timed generation (prompt pass excluded). */
function oursWorker(checkpoint: string, threads: number): void {
  const ck = loadCheckpoint(checkpoint);
  const m = NativeModel.open(ck.modelCfg, 1);
  m.setThreads(threads);
  m.setParams(ck.params);
  const prompt = Int32Array.from(promptFor(ck.modelCfg.V));
  const n = ck.modelCfg.T - PROMPT;
  const opts = { temperature: 0, topK: 0, seed: 0, maxNewTokens: n };
  generate(m, prompt, { ...opts, maxNewTokens: 8 }); // warm-up
  // the prompt pass alone, then the whole generation: their difference is the decoding
  const t0 = performance.now();
  generate(m, prompt, { ...opts, maxNewTokens: 1 });
  const t1 = performance.now();
  const ids = generate(m, prompt, opts);
  const t2 = performance.now();
  m.close();
  console.log(JSON.stringify({ tokensPerS: (n - 1) / ((t2 - t1 - (t1 - t0)) / 1000), ids }));
}

function child(cmd: string[], env: Record<string, string>): Side {
  const p = Bun.spawnSync(cmd, { env: { ...process.env, ...env }, stdout: "pipe", stderr: "pipe" });
  if (p.exitCode !== 0) throw new Error(`${cmd.join(" ")} failed: ${p.stderr.toString()}`);
  return JSON.parse(p.stdout.toString().trim().split("\n").pop()!) as Side;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)]!; // of an even count, the slower middle one
}

export async function decodeBench(shapes: Shape[], rounds: number, threads: number): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "bench-decode-"));
  const env = { OMP_NUM_THREADS: String(threads), OPENBLAS_NUM_THREADS: String(threads) };
  const load0 = loadavg()[0]!;
  const rows: string[] = [];
  try {
    for (const shape of shapes) {
      const ckpt = join(dir, `${shape.name}.pt`);
      saveCheckpoint(ckpt, { modelCfg: shape.cfg, trainCfg: { bench: "decode" }, params: initParams(shape.cfg, 1), opt: null, step: 0, bestValLoss: null });
      const ours: Side[] = [];
      const torch: Side[] = [];
      const n = shape.cfg.T - PROMPT;
      for (let r = 0; r < rounds; r++) {
        ours.push(child([process.execPath, import.meta.path, "--worker", ckpt, "--threads", String(threads)], env));
        const t = child([PYTHON, join(import.meta.dir, "..", "interop", "torch_decode.py"), "bench", "--checkpoint", ckpt,
          "--prompt", promptFor(shape.cfg.V).join(","), "--new", String(n), "--threads", String(threads)], env) as unknown as { ids: number[]; tokens_per_s: number[] };
        torch.push({ tokensPerS: t.tokens_per_s[0]!, ids: t.ids });
      }
      const same = ours.every((o) => o.ids.length === n && o.ids.every((id, i) => id === torch[0]!.ids[i]));
      const o = ours.map((s) => s.tokensPerS), t = torch.map((s) => s.tokensPerS);
      rows.push(
        `  ${shape.name.padEnd(3)} decode B=1  ${String(n).padStart(4)} new  ours ${median(o).toFixed(0).padStart(6)} tok/s (${Math.max(...o).toFixed(0)} / ${Math.min(...o).toFixed(0)})` +
          `  torch ${median(t).toFixed(0).padStart(6)} tok/s (${Math.max(...t).toFixed(0)} / ${Math.min(...t).toFixed(0)})  ours/torch ${(median(o) / median(t)).toFixed(2)}x  same greedy ids: ${same ? "yes" : "NO"}`,
      );
      console.log(rows[rows.length - 1]);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  console.log(`  decode: median of ${rounds} interleaved rounds per side (best / worst), greedy, prompt ${PROMPT} tokens, ${threads} thread(s) each; load average ${load0.toFixed(2)} -> ${loadavg()[0]!.toFixed(2)} on ${cpus().length} cores`);
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: { worker: { type: "string" }, threads: { type: "string" }, shapes: { type: "string", default: "S1,S2" }, rounds: { type: "string", default: "5" } },
  });
  const threads = Number(values.threads ?? cpus().length);
  if (values.worker) oursWorker(values.worker, threads);
  else {
    console.log("decode speed, batch 1 (bun bench/decode.ts)");
    await decodeBench(values.shapes!.split(",").map(shapeNamed), Number(values.rounds), threads);
  }
}
