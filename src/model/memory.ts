/**
 * What a run needs in memory, estimated from its configs before anything is allocated,
 * so that an absurd config (V = 2^31 - 1, eval_batches = 1e9) is refused with exit 2
 * instead of dying in an allocation. The estimate counts, in float32 values:
 *   native model: parameters, gradients, AdamW m and v (4 P), one more gradient buffer per
 *     extra CPU lane (native/include/gpt.h), the activations kept for the backward pass
 *     (per token and layer: residuals, q/k/v, attention output and the MLP's hidden
 *     values; attention probabilities H x T) and a 16 MB block of logits;
 *   the JS side: the weights and moments read from a checkpoint and their copies for a
 *     save (6 P), plus the checkpoint file's bytes while it is decoded (12 P);
 *   the eval batches, built once (x and y, int32).
 * It is an estimate (the native side recomputes some activations), good to about 2x.
 */
import { availableParallelism } from "node:os";
import { numParamsOf, type ModelCfg } from "./config.ts";

export interface MemoryEstimate {
  total: number; // bytes
  parts: Array<[string, number]>; // what takes it, in bytes
}

const F32 = 4;
const LOGITS_BLOCK_BYTES = 16 << 20;

export function estimateRunMemory(model: ModelCfg, train: { B: number; eval_batches: number }, threads = availableParallelism()): MemoryEstimate {
  const { T, C, L, H, d_ff } = model;
  const P = numParamsOf(model);
  const tokens = train.B * T;
  const lanes = Math.max(1, Math.min(threads, 1024));
  const modelBytes = F32 * P * (4 + (lanes - 1));
  const activationBytes = F32 * tokens * (L * (8 * C + 2 * d_ff + H * T) + 4 * C) + LOGITS_BLOCK_BYTES;
  const hostBytes = F32 * P * (6 + 3);
  const evalBytes = 2 * 4 * train.eval_batches * tokens;
  const parts: Array<[string, number]> = [
    ["weights, gradients and AdamW moments", modelBytes],
    ["activations", activationBytes],
    ["checkpoint copies", hostBytes],
    ["eval batches", evalBytes],
  ];
  return { total: parts.reduce((a, [, b]) => a + b, 0), parts };
}
