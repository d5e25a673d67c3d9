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

/** Problems with a model cfg, as "key: what is wrong" strings (empty when valid). */
export function modelCfgProblems(cfg: Record<string, unknown>): string[] {
  const problems: string[] = [];
  for (const key of MODEL_CFG_KEYS) {
    const value = cfg[key];
    if (typeof value !== "number" || !Number.isInteger(value) || value < 1) {
      problems.push(`${key}: expected an integer >= 1, got ${JSON.stringify(value)}`);
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
