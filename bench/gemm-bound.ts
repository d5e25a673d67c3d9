/**
 * The GEMM-only bound of a shape: bench/gemm_bound.c runs exactly the matmuls of one
 * training step (same shapes, transposes, betas, own activation buffers) through the
 * GEMM code the library uses (its small GEMM, the BLAS it links), and nothing else. No
 * step of ours can beat it with these GEMMs, whatever the other ops cost: it tells what
 * a target asks of the GEMMs.
 */
import { join } from "node:path";
import { BUILD_DIR, buildProgram, NATIVE } from "../scripts/build-native.ts";
import type { Shape } from "./shapes.ts";

export interface GemmBound {
  stepS: number; // median seconds per step of the GEMMs alone
  gemmFlops: number; // FLOPs of those GEMMs per step
  lanes: number; // 1: one list over all rows, BLAS-threaded; n: n lanes of B/n rows, one thread each
}

export function buildGemmBound(): string {
  return buildProgram(
    [join(import.meta.dir, "gemm_bound.c"), join(NATIVE, "cpu", "sgemm_small.c")],
    join(BUILD_DIR, "bench", "gemm_bound"),
  );
}

function runOnce(bin: string, shape: Shape, threads: number, lanes: number, reps: number): GemmBound {
  const { V, T, C, L, d_ff } = shape.cfg;
  const args = [V, T, C, L, d_ff, shape.B, threads, lanes, reps].map(String);
  const p = Bun.spawnSync([bin, ...args], { stdout: "pipe", stderr: "pipe" });
  if (p.exitCode !== 0) throw new Error(`${bin} ${args.join(" ")} failed (exit ${p.exitCode}): ${p.stderr.toString().trim()}`);
  const r = JSON.parse(p.stdout.toString()) as { stepS: number; gemmFlops: number };
  return { ...r, lanes };
}

/** The faster of both ways to spread the GEMMs over `threads`: lanes (when B splits
 * evenly; Linux only, where the library runs them) and one BLAS-threaded list; or only
 * `lanes` when given (a later round keeps the way the first one found faster). */
export function measureGemmBound(bin: string, shape: Shape, threads: number, lanes?: number, minSeconds = 1): GemmBound {
  const ways = lanes ? [lanes] : [1];
  if (!lanes && threads > 1 && shape.B % threads === 0 && process.platform !== "darwin") ways.push(threads);
  let best: GemmBound | null = null;
  for (const way of ways) {
    const probe = runOnce(bin, shape, threads, way, 1);
    const reps = Math.max(3, Math.min(200, Math.ceil(minSeconds / probe.stepS)));
    const r = runOnce(bin, shape, threads, way, reps);
    if (!best || r.stepS < best.stepS) best = r;
  }
  return best!;
}
