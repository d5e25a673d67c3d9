/** The benchmark shapes of issue 6: S1 and S2 as given, S3 a larger one of ours. */
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
};

/** SHAPES[name], or an error naming the shapes there are. */
export function shapeNamed(name: string): Shape {
  const shape = SHAPES[name.trim().toUpperCase()];
  if (!shape) throw new Error(`unknown shape "${name}": expected one of ${Object.keys(SHAPES).join(", ")}`);
  return shape;
}
