/**
 * The flat parameter buffer: names, shapes and offsets in nanoGPT's state-dict order
 * (the same order native/include/gpt.h documents), GPT-2 init, and named views.
 */
import type { ModelCfg } from "./config.ts";
import { Rng, RNG_STREAM } from "../util/random.ts";

export interface ParamSpec {
  name: string; // nanoGPT state-dict name
  shape: number[]; // torch shape, nn.Linear weights as (out, in)
  offset: number; // in floats, into the flat buffer
  size: number; // number of floats
  decay: boolean; // AdamW weight decay applies (2-D tensors, as nanoGPT groups them)
}

/** lm_head.weight is tied to (shares storage with) the token embedding. */
export const TIED_LM_HEAD = { name: "lm_head.weight", tiedTo: "transformer.wte.weight" } as const;

/** Shapes in state-dict order, before offsets are assigned. */
function paramShapes(cfg: ModelCfg): Array<[string, number[]]> {
  const { V, T, C, L, d_ff } = cfg;
  const shapes: Array<[string, number[]]> = [
    ["transformer.wte.weight", [V, C]],
    ["transformer.wpe.weight", [T, C]],
  ];
  for (let l = 0; l < L; l++) {
    const p = `transformer.h.${l}.`;
    shapes.push(
      [p + "ln_1.weight", [C]],
      [p + "ln_1.bias", [C]],
      [p + "attn.c_attn.weight", [3 * C, C]],
      [p + "attn.c_attn.bias", [3 * C]],
      [p + "attn.c_proj.weight", [C, C]],
      [p + "attn.c_proj.bias", [C]],
      [p + "ln_2.weight", [C]],
      [p + "ln_2.bias", [C]],
      [p + "mlp.c_fc.weight", [d_ff, C]],
      [p + "mlp.c_fc.bias", [d_ff]],
      [p + "mlp.c_proj.weight", [C, d_ff]],
      [p + "mlp.c_proj.bias", [C]],
    );
  }
  shapes.push(["transformer.ln_f.weight", [C]], ["transformer.ln_f.bias", [C]]);
  return shapes;
}

export function paramLayout(cfg: ModelCfg): ParamSpec[] {
  let offset = 0;
  return paramShapes(cfg).map(([name, shape]) => {
    const size = shape.reduce((a, b) => a * b, 1);
    const spec = { name, shape, offset, size, decay: shape.length >= 2 };
    offset += size;
    return spec;
  });
}

export function numParams(cfg: ModelCfg): number {
  const layout = paramLayout(cfg);
  const last = layout[layout.length - 1]!;
  return last.offset + last.size;
}

/**
 * GPT-2 init as nanoGPT: Linear and embedding weights N(0, 0.02), the residual
 * projections (attn.c_proj, mlp.c_proj) N(0, 0.02/sqrt(2L)), biases 0, LayerNorm 1/0.
 */
export function initParams(cfg: ModelCfg, seed: number): Float32Array {
  const flat = new Float32Array(numParams(cfg));
  const rng = new Rng(seed, 0, RNG_STREAM.init);
  const residualStd = 0.02 / Math.sqrt(2 * cfg.L);
  for (const p of paramLayout(cfg)) {
    const view = flat.subarray(p.offset, p.offset + p.size);
    if (p.name.endsWith("ln_1.weight") || p.name.endsWith("ln_2.weight") || p.name.endsWith("ln_f.weight")) {
      view.fill(1);
    } else if (p.shape.length >= 2) {
      const std = p.name.endsWith("c_proj.weight") ? residualStd : 0.02;
      for (let i = 0; i < view.length; i++) view[i] = rng.normal() * std;
    } // biases stay 0
  }
  return flat;
}

/** Named views into a flat buffer (no copies), in layout order. */
export function stateDictViews(cfg: ModelCfg, flat: Float32Array): Map<string, { shape: number[]; data: Float32Array }> {
  const views = new Map<string, { shape: number[]; data: Float32Array }>();
  for (const p of paramLayout(cfg)) {
    views.set(p.name, { shape: p.shape, data: flat.subarray(p.offset, p.offset + p.size) });
  }
  return views;
}
