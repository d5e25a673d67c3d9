/** Model configuration: the shape-critical keys of the spec (V, T, C, L, H, d_ff). */
export interface ModelCfg {
  V: number; // vocabulary size
  T: number; // context length
  C: number; // embedding width
  L: number; // layers
  H: number; // attention heads (C % H == 0)
  d_ff: number; // MLP hidden width
}

export const MODEL_CFG_KEYS = ["V", "T", "C", "L", "H", "d_ff"] as const;

/** Counts and sizes reach the native library as int32 (gpt.h): above this they would wrap. */
export const INT32_MAX = 2147483647;

/** Problems with a model cfg, as "key: what is wrong" strings (empty when valid). */
export function modelCfgProblems(cfg: Record<string, unknown>): string[] {
  const problems: string[] = [];
  for (const key of MODEL_CFG_KEYS) {
    const value = cfg[key];
    if (typeof value !== "number" || !Number.isInteger(value) || value < 1 || value > INT32_MAX) {
      problems.push(`${key}: expected an integer from 1 to ${INT32_MAX} (2^31 - 1), got ${typeof value === "bigint" ? String(value) : JSON.stringify(value)}`);
    }
  }
  if (problems.length === 0 && (cfg.C as number) % (cfg.H as number) !== 0) {
    problems.push(`C: ${cfg.C} is not divisible by H=${cfg.H}`);
  }
  return problems;
}

/** The shape-critical keys whose values differ between two cfgs. */
export function modelCfgDifferences(a: ModelCfg, b: ModelCfg): string[] {
  return MODEL_CFG_KEYS.filter((k) => a[k] !== b[k]).map((k) => `${k}: ${a[k]} vs ${b[k]}`);
}

/**
 * The number of parameters (floats of the flat buffer, src/model/layout.ts) computed
 * without building the layout: safe for absurd sizes (a float, maybe above 2^53).
 */
export function numParamsOf(cfg: ModelCfg): number {
  const { V, T, C, L, d_ff } = cfg;
  const perLayer = 2 * C + 3 * C * C + 3 * C + C * C + C + 2 * C + d_ff * C + d_ff + C * d_ff + C;
  return V * C + T * C + L * perLayer + 2 * C;
}
