/**
 * Run the PyTorch reference (interop/*.py) from tests: spawn /usr/bin/python3 and
 * exchange flat arrays through files in a temp directory.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** The interpreter with torch (Debian python3-torch); TRAIN_TEST_PYTHON overrides it. */
export const PYTHON = process.env.TRAIN_TEST_PYTHON ?? "/usr/bin/python3";

export const INTEROP_DIR = join(import.meta.dir, "..", "..", "interop");

export interface PythonResult {
  stdout: string;
  stderr: string;
}

/** Run a script (path relative to interop/ or absolute); throws with its stderr on failure. */
export function runPython(script: string, args: string[], env: Record<string, string> = {}): PythonResult {
  const path = script.startsWith("/") ? script : join(INTEROP_DIR, script);
  const proc = Bun.spawnSync([PYTHON, path, ...args], {
    env: { ...process.env, OMP_NUM_THREADS: "1", OPENBLAS_NUM_THREADS: "1", ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  const stdout = proc.stdout.toString();
  const stderr = proc.stderr.toString();
  if (proc.exitCode !== 0) {
    throw new Error(`${PYTHON} ${path} ${args.join(" ")} exited with ${proc.exitCode}:\n${stderr}`);
  }
  return { stdout, stderr };
}

/** torch's version; throws a clear error when the interpreter or torch is missing. */
export function torchVersion(): string {
  const proc = Bun.spawnSync([PYTHON, "-c", "import torch; print(torch.__version__)"], {
    stdout: "pipe",
    stderr: "pipe",
  });
  if (proc.exitCode !== 0) {
    throw new Error(
      `parity tests need ${PYTHON} with torch (Debian: apt install python3-torch): ${proc.stderr.toString().trim()}`,
    );
  }
  return proc.stdout.toString().trim();
}

export function makeTempDir(prefix: string): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/** Raw little-endian bytes of a typed array (the platforms we run on are little-endian). */
export function writeArray(path: string, a: Float32Array | Int32Array): void {
  writeFileSync(path, new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
}

export function readF32(path: string): Float32Array {
  const bytes = readFileSync(path);
  if (bytes.byteLength % 4 !== 0) throw new Error(`${path}: ${bytes.byteLength} bytes is not a whole number of float32`);
  // Copy into a fresh, aligned buffer.
  return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
}

export function writeJson(path: string, value: unknown): void {
  writeFileSync(path, JSON.stringify(value));
}

export function readJson<T>(path: string): T {
  return JSON.parse(readFileSync(path, "utf8")) as T;
}
