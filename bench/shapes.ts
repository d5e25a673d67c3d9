/** The benchmark shapes: S1 and S2 of issue 6, S3 a larger one of ours, S4 GPT-2 small
 * (124M parameters, llm.c's and nanoGPT's headline shape; issue 22). */
import type { ModelCfg } from "../src/model/config.ts";

export interface Shape {
  name: string;
  cfg: ModelCfg;
  B: number;
}

export const SHAPES: Record<string, Shape> = {
  S1: { name: "S1", cfg: { V: 512, T: 128, C: 128, L: 4, H: 4, d_ff: 512 }, B: 16 },
  S2: { name: "S2", cfg: { V: 4096, T: 256, C: 384, L: 6, H: 6, d_ff: 1536 }, B: 16 },
  S3: { name: "S3", cfg: { V: 8192, T: 256, C: 512, L: 8, H: 8, d_ff: 2048 }, B: 8 },
  S4: { name: "S4", cfg: { V: 50257, T: 1024, C: 768, L: 12, H: 12, d_ff: 3072 }, B: 1 },
};

/** SHAPES[name], or an error naming the shapes there are. */
export function shapeNamed(name: string): Shape {
  const shape = SHAPES[name.trim().toUpperCase()];
  if (!shape) throw new Error(`unknown shape "${name}": expected one of ${Object.keys(SHAPES).join(", ")}`);
  return shape;
}
