/**
 * The MPS size guard's arithmetic (gpt_check_limits, native/limits.c) with the limits
 * given, so it runs on any machine: every tensor of the MPS graph against MPSNDArray's
 * 2^31 - 1 elements and 2^32 bytes and a device's largest buffer; the largest tensor is
 * named with its shape, its size and the limit; exactly at a limit is accepted, one row
 * more is not. On a Mac, gpt_create applying the device's own limits is in tests/mps.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { NativeError, tensorLimitProblem, type DeviceLimits } from "../src/backend/native.ts";
import type { ModelCfg } from "../src/model/config.ts";

const GiB4 = 2 ** 32;
/** An Apple GPU's limits: MPSNDArray's, and a buffer limit above them (as on Macs with 16 GB or more). */
const MPS: DeviceLimits = { maxTensorElements: 2 ** 31 - 1, maxTensorBytes: GiB4, maxBufferBytes: 2 ** 34 };

const model = (o: Partial<ModelCfg>): ModelCfg => ({ V: 256, T: 64, C: 64, L: 1, H: 1, d_ff: 64, ...o });

describe("the MPS size guard (limits given: runs anywhere)", () => {
  test("the default config (configs/model.json, B=32) fits with room to spare", () => {
    expect(tensorLimitProblem({ V: 512, T: 256, C: 384, L: 6, H: 6, d_ff: 1536 }, 32, "mps", undefined, MPS)).toBeNull();
  });

  test("the logits (B*T, V): exactly 2^32 bytes fit, one more row does not", () => {
    // T=1, H=1 keep attention tiny: the logits (and the one-hot tokens and targets of the same shape) are the largest
    const cfg = model({ V: 256, T: 1 });
    const B = GiB4 / 4 / 256; // 2^22 rows of 256 floats = 2^32 bytes
    expect(tensorLimitProblem(cfg, B, "mps", undefined, MPS)).toBeNull();
    expect(tensorLimitProblem(cfg, B + 1, "mps", undefined, MPS)).toBe(
      "the logits (and the one-hot targets, and the one-hot tokens of the embedding) (B*T, V) = (4194305, 256) takes 4294968320 bytes (4.00 GiB), more than the 4294967296 bytes (4.00 GiB) one tensor may hold on mps",
    );
  });

  test("GPT-2's vocabulary at T=1024: B=20 fits, B=21 does not (the logits)", () => {
    const gpt2 = { V: 50257, T: 1024, C: 768, L: 12, H: 12, d_ff: 3072 };
    expect(tensorLimitProblem(gpt2, 20, "mps", undefined, MPS)).toBeNull();
    expect(tensorLimitProblem(gpt2, 21, "mps", undefined, MPS)).toStartWith("the logits (and the one-hot targets, and the one-hot tokens of the embedding) (B*T, V) = (21504, 50257) takes 4322906112 bytes");
  });

  test("the attention scores (B, H, T, T) when they are the largest", () => {
    const cfg = model({ V: 64, T: 1024, C: 64, H: 16 });
    expect(tensorLimitProblem(cfg, 64, "mps", undefined, MPS)).toBeNull(); // 64*16*1024*1024 floats = 2^32 bytes
    expect(tensorLimitProblem(cfg, 65, "mps", undefined, MPS)).toStartWith(
      "the attention scores and probabilities (B, H, T, T) = (65, 16, 1024, 1024) takes 4362076160 bytes (4.06 GiB)",
    );
  });

  test("the MLP hidden layer (B*T, d_ff) when it is the largest", () => {
    const cfg = model({ V: 64, T: 64, C: 64, d_ff: 2 ** 16 });
    expect(tensorLimitProblem(cfg, 256, "mps", undefined, MPS)).toBeNull(); // 2^14 rows x 2^16 = 2^30 floats
    expect(tensorLimitProblem(cfg, 257, "mps", undefined, MPS)).toStartWith("the MLP hidden layer (B*T, d_ff) = (16448, 65536)");
  });

  test("a parameter tensor (with its gradient and moments) when it is the largest", () => {
    const cfg = model({ V: 2 ** 20 + 1, T: 1, C: 1024, H: 1 }); // wte (V, C) just over 2^30 floats
    expect(tensorLimitProblem(cfg, 1, "mps", undefined, MPS)).toStartWith(
      "the parameter wte (and its gradient and AdamW moments) (d0, d1) = (1048577, 1024) takes 4294971392 bytes",
    );
    const mlp = model({ V: 64, T: 1, C: 2 ** 14, d_ff: 2 ** 16 + 1 }); // h.0 c_fc weight (d_ff, C)
    expect(tensorLimitProblem(mlp, 1, "mps", undefined, MPS)).toStartWith("the parameter h.0.mlp.c_fc.weight");
  });

  test("a device whose largest buffer is smaller than MPSNDArray's limit: that buffer is the limit", () => {
    const small = { ...MPS, maxBufferBytes: 2 ** 30 }; // 1 GiB
    const cfg = model({ V: 256, T: 1 });
    const B = 2 ** 30 / 4 / 256;
    expect(tensorLimitProblem(cfg, B, "mps", undefined, small)).toBeNull();
    expect(tensorLimitProblem(cfg, B + 1, "mps", undefined, small)).toBe(
      "the logits (and the one-hot targets, and the one-hot tokens of the embedding) (B*T, V) = (1048577, 256) takes 1073742848 bytes (1.00 GiB), more than the 1073741824 bytes (1.00 GiB) of the mps device's largest buffer",
    );
  });

  test("the element limit on its own", () => {
    const cfg = model({ V: 256, T: 64 });
    expect(tensorLimitProblem(cfg, 1, "mps", undefined, { maxTensorElements: 64 * 256, maxTensorBytes: 0, maxBufferBytes: 0 })).toBeNull();
    expect(tensorLimitProblem(cfg, 2, "mps", undefined, { maxTensorElements: 64 * 256, maxTensorBytes: 0, maxBufferBytes: 0 })).toBe(
      "the logits (and the one-hot targets, and the one-hot tokens of the embedding) (B*T, V) = (128, 256) has 32768 elements, more than the 16384 one tensor may hold on mps",
    );
  });

  test("no limits (all 0) and the cpu device accept anything", () => {
    const gpt2 = { V: 50257, T: 1024, C: 768, L: 12, H: 12, d_ff: 3072 };
    expect(tensorLimitProblem(gpt2, 512, "mps", undefined, { maxTensorElements: 0, maxTensorBytes: 0, maxBufferBytes: 0 })).toBeNull();
    expect(tensorLimitProblem(gpt2, 512, "cpu", undefined, MPS)).toBeNull();
    expect(tensorLimitProblem(gpt2, 512, "cpu")).toBeNull(); // this machine's cpu: no per-tensor limits
  });

  test("an invalid model or batch is an error, not an answer", () => {
    expect(() => tensorLimitProblem(model({ H: 3 }), 1, "mps", undefined, MPS)).toThrow(/not divisible by H=3/);
    expect(() => tensorLimitProblem(model({}), 0, "mps", undefined, MPS)).toThrow(/batch size B=0 is invalid/);
  });

  test.skipIf(process.platform === "darwin")("off macOS, the device's own limits cannot be asked for (no mps backend)", () => {
    expect(() => tensorLimitProblem(model({}), 1, "mps")).toThrow(NativeError);
    expect(() => tensorLimitProblem(model({}), 1, "mps")).toThrow(/mps is not available/);
  });
});
