/**
 * Model FLOP counts for the benchmark.
 *
 * Convention (PaLM appendix B / nanoGPT's estimate_mfu): a training token costs
 * 6 * N + 12 * L * T * C FLOPs, where N counts the parameters of every matmul, the LM
 * head included (embeddings looked up, LayerNorms and biases are not matmuls), and the
 * attention term is QK^T and AV over the full T x T (the causal half is NOT discounted).
 * A forward-only (eval) token costs a third of that: 2 * N + 4 * L * T * C.
 */
import type { ModelCfg } from "../src/model/config.ts";

export const FLOP_CONVENTION =
  "FLOPs/token: train 6*N + 12*L*T*C, eval 2*N + 4*L*T*C; N = matmul params incl. tied LM head; causal half not discounted";

/** Parameters that take part in a matmul: c_attn, attn.c_proj, c_fc, mlp.c_proj per layer, and the LM head. */
export function matmulParams(cfg: ModelCfg): number {
  const perLayer = 3 * cfg.C * cfg.C + cfg.C * cfg.C + 2 * cfg.C * cfg.d_ff;
  return cfg.L * perLayer + cfg.V * cfg.C;
}

export function trainFlopsPerToken(cfg: ModelCfg): number {
  return 6 * matmulParams(cfg) + 12 * cfg.L * cfg.T * cfg.C;
}

export function evalFlopsPerToken(cfg: ModelCfg): number {
  return trainFlopsPerToken(cfg) / 3;
}
