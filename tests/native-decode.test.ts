/**
 * Incremental decoding (gpt_decode_begin / gpt_decode_step, native/cpu/decode.c) against
 * PyTorch (interop/reference_gpt.py's full forward, through interop/torch_decode.py): the
 * logits of the prompt pass and of every decoded step match the full forward's logits at
 * that position to 1e-5 (max |ours - torch| / max |torch|), at one and two threads.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import type { ModelCfg } from "../src/model/config.ts";
import { initParams } from "../src/model/layout.ts";
import { NativeModel } from "../src/backend/native.ts";
import { relErr } from "./helpers/compare.ts";
import { makeTempDir, readF32, removeDir, runPython, torchVersion, writeArray, writeJson } from "./helpers/torch.ts";

const TOL = 1e-5;

interface Case {
  name: string;
  cfg: ModelCfg;
  prompt: number; // tokens in the prompt pass; the rest of T are decoded steps
  seed: number;
}

const CASES: Case[] = [
  { name: "V97 T13 C48 H4 (C/H=12)", cfg: { V: 97, T: 13, C: 48, L: 2, H: 4, d_ff: 80 }, prompt: 5, seed: 3 },
  { name: "V256 T40 C64 H2", cfg: { V: 256, T: 40, C: 64, L: 3, H: 2, d_ff: 256 }, prompt: 1, seed: 4 },
  { name: "V300 T24 C96 H6, whole-context prompt", cfg: { V: 300, T: 24, C: 96, L: 2, H: 6, d_ff: 200 }, prompt: 24, seed: 5 },
];

/** Weights with some spread (initParams' LayerNorms are exactly 1/0: perturb them too). */
function params(cfg: ModelCfg, seed: number): Float32Array {
  const p = initParams(cfg, seed);
  let s = seed * 7919 + 1;
  for (let i = 0; i < p.length; i++) {
    s = (s * 1103515245 + 12345) % 2147483648;
    p[i] = p[i]! * 3 + ((s / 2147483648) - 0.5) * 0.1;
  }
  return p;
}

function tokens(cfg: ModelCfg, seed: number): Int32Array {
  const t = new Int32Array(cfg.T);
  for (let i = 0; i < t.length; i++) t[i] = (i * 37 + seed * 11 + ((i * i) % 7)) % cfg.V;
  return t;
}

let dir = "";
beforeAll(() => {
  torchVersion();
  dir = makeTempDir("decode-");
});
afterAll(() => removeDir(dir));

describe("decode logits vs PyTorch's full forward", () => {
  for (const c of CASES) {
    test(c.name, () => {
      const { cfg } = c;
      const p = params(cfg, c.seed);
      const ids = tokens(cfg, c.seed);
      const base = join(dir, String(c.seed));
      writeJson(`${base}.cfg.json`, cfg);
      writeArray(`${base}.params.f32`, p);
      writeArray(`${base}.tokens.i32`, ids);
      runPython("torch_decode.py", ["logits", "--cfg", `${base}.cfg.json`, "--params", `${base}.params.f32`,
        "--tokens", `${base}.tokens.i32`, "--out", `${base}.logits.f32`]);
      const ref = readF32(`${base}.logits.f32`);
      const V = cfg.V;
      const at = (t: number) => ref.subarray(t * V, (t + 1) * V);

      for (const threads of [1, 2]) {
        const m = NativeModel.open(cfg, 1);
        try {
          m.setThreads(threads);
          m.setParams(p);
          // prompt pass, every position
          const all = new Float32Array(c.prompt * V);
          m.decodeBegin(ids.subarray(0, c.prompt), all, true);
          for (let t = 0; t < c.prompt; t++) {
            const err = relErr(all.subarray(t * V, (t + 1) * V), at(t));
            if (!(err < TOL)) throw new Error(`threads ${threads}, prompt position ${t}: relative error ${err}`);
          }
          // the last position alone gives the same numbers
          const last = new Float32Array(V);
          m.decodeBegin(ids.subarray(0, c.prompt), last);
          expect(relErr(last, at(c.prompt - 1))).toBeLessThan(TOL);
          // every decoded step, up to a full context
          const step = new Float32Array(V);
          let worst = 0;
          for (let t = c.prompt; t < cfg.T; t++) {
            m.decodeStep(ids[t]!, step);
            const err = relErr(step, at(t));
            worst = Math.max(worst, err);
            if (!(err < TOL)) throw new Error(`threads ${threads}, step at position ${t}: relative error ${err}`);
          }
          expect(worst).toBeLessThan(TOL);
          // the context is full: a further step is refused, a new prompt pass starts over
          expect(() => m.decodeStep(0, step)).toThrow(/context is full \(T=\d+ positions\)/);
        } finally {
          m.close();
        }
      }
    });
  }
});

describe("decode state and input checks", () => {
  const cfg: ModelCfg = { V: 50, T: 8, C: 16, L: 1, H: 2, d_ff: 32 };
  test("a step needs a prompt pass; new parameters empty the cache; bad ids and lengths are refused", () => {
    const m = NativeModel.open(cfg, 2);
    try {
      const logits = new Float32Array(cfg.V * cfg.T);
      expect(() => m.decodeStep(1, logits)).toThrow(/call gpt_decode_begin first/);
      m.setParams(params(cfg, 1));
      expect(() => m.decodeBegin(new Int32Array(0), logits)).toThrow(/prompt length 0 is invalid: expected 1 to T=8/);
      expect(() => m.decodeBegin(new Int32Array(9), logits)).toThrow(/prompt length 9 is invalid/);
      expect(() => m.decodeBegin(Int32Array.of(1, 50), logits)).toThrow(/prompt token 1 = 50 is out of range: expected an id in \[0, V=50\)/);
      m.decodeBegin(Int32Array.of(1, 2), logits);
      expect(() => m.decodeStep(-1, logits)).toThrow(/token = -1 is out of range/);
      m.decodeStep(3, logits);
      m.setParams(params(cfg, 2));
      expect(() => m.decodeStep(4, logits)).toThrow(/call gpt_decode_begin first/);
    } finally {
      m.close();
    }
  });
});
