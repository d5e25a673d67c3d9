/**
 * Every forward and backward kernel of the CPU backend in isolation against a reference
 * in double (central differences of it, or its chain rule for attention): compiles
 * tests/native/gradcheck.c against native/cpu/kernels_*.c (cc from PATH, the same BLAS as
 * the library) and runs it with 3 threads (uneven splits) and with 1. Each line carries
 * its own tolerance (~10x the error of the correct kernel); they are parsed here, one
 * test per kernel.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { BUILD_DIR, buildProgram, NATIVE, ROOT } from "../scripts/build-native.ts";

const BIN = join(BUILD_DIR, "tests", "gradcheck");
const KERNELS = ["encoder", "layernorm", "matmul", "attention", "gelu", "residual", "softmax_ce"];

interface Line {
  name: string;
  error: number;
  tol: number;
  pass: boolean;
}

function runGradcheck(threads: number): { lines: Line[]; code: number; out: string } {
  const p = Bun.spawnSync([BIN, String(threads)], { stdout: "pipe", stderr: "pipe" });
  const out = p.stdout.toString() + p.stderr.toString();
  const lines: Line[] = [];
  for (const l of out.split("\n")) {
    const m = /^(.*?)\s+(\S+)\s+(\S+)\s+(PASS|FAIL)\b/.exec(l);
    if (m) lines.push({ name: m[1]!, error: Number(m[2]), tol: Number(m[3]), pass: m[4] === "PASS" });
  }
  return { lines, code: p.exitCode ?? 1, out };
}

beforeAll(() => {
  buildProgram([join(ROOT, "tests", "native", "gradcheck.c"), ...["matmul", "attention", "misc"].map((f) => join(NATIVE, "cpu", `kernels_${f}.c`)), join(NATIVE, "cpu", "sgemm_small.c"), join(NATIVE, "cpu", "pool.c")], BIN);
}, 120_000);

for (const threads of [3, 1]) {
  describe(`native kernels vs a reference in double (${threads} thread${threads > 1 ? "s" : ""})`, () => {
    let result: ReturnType<typeof runGradcheck>;
    beforeAll(() => {
      result = runGradcheck(threads);
    }, 60_000);

    test("the checker rejects a gradient off by 10x its tolerance", () => {
      const l = result.lines.find((x) => x.name === "checker rejects 10x tolerance off");
      expect(l?.pass).toBe(true);
    });

    // GPT-2's initialisation gives the residual stream std ~0.02: there eps (1e-5) is a few
    // percent of the variance and a wrong eps moves LayerNorm's output and gradient by ~1%
    test("layernorm at std 0.02 (where eps matters) matches the double reference", () => {
      const mine = result.lines.filter((l) => l.name.startsWith("layernorm") && l.name.includes("std 0.02"));
      expect(mine.map((l) => l.name.split(" ").pop())).toEqual(["double", "dinp", "dw", "db", "recompute"]);
      expect(mine.filter((l) => !l.pass)).toEqual([]);
    });

    for (const kernel of KERNELS) {
      test(`${kernel}: every check within tolerance`, () => {
        const mine = result.lines.filter((l) => l.name.startsWith(kernel));
        expect(mine.length).toBeGreaterThan(0);
        const bad = mine.filter((l) => !l.pass || !(l.error <= l.tol)).map((l) => `${l.name}: ${l.error} > ${l.tol}`);
        expect(bad).toEqual([]);
      });
    }

    test("the program exits 0 and every line passes", () => {
      expect(result.lines.filter((l) => !l.pass)).toEqual([]);
      expect(result.code).toBe(0);
    });
  });
}
