/**
 * The small GEMM of the CPU backend (native/cpu/sgemm_small.c) against the BLAS: builds
 * tests/native/sgemm_check.c with the library's flags and runs it (tile, block and
 * stride edges, both layouts of B, beta 0 and 1, alpha != 1, sums started from a bias;
 * the padding between rows of C untouched).
 */
import { beforeAll, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { BUILD_DIR, buildProgram, NATIVE, ROOT } from "../scripts/build-native.ts";

const BIN = join(BUILD_DIR, "tests", "sgemm_check");
let out = "";
let code = -1;

beforeAll(() => {
  buildProgram([join(ROOT, "tests", "native", "sgemm_check.c"), join(NATIVE, "cpu", "sgemm_small.c")], BIN);
  const p = Bun.spawnSync([BIN], { stdout: "pipe", stderr: "pipe" });
  out = p.stdout.toString() + p.stderr.toString();
  code = p.exitCode ?? 1;
}, 120_000);

test("every case matches the BLAS to 1e-6 of its magnitude", () => {
  const cases = out.split("\n").filter((l) => / (PASS|FAIL)$/.test(l));
  expect(cases.length).toBe(2 * 6 * 7 * 6 * 3);
  expect(cases.filter((l) => l.includes(" bias ")).length).toBe(2 * 6 * 7 * 6);
  expect(cases.filter((l) => l.endsWith("FAIL"))).toEqual([]);
  expect(code).toBe(0);
});

test("on an x86-64 CPU with AVX2 and FMA the library takes its small GEMMs this way", () => {
  const flags = process.arch === "x64" && process.platform === "linux" ? readFileSync("/proc/cpuinfo", "utf8") : "";
  const avx2 = /\bavx2\b/.test(flags) && /\bfma\b/.test(flags);
  expect(out).toContain(`fits ${avx2 ? 1 : 0}`);
});
