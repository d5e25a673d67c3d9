/**
 * dist/train for tests that run the executable: built by scripts/build-native.ts +
 * scripts/build-exe.ts, and rebuilt only when the library, a source file or the build
 * script is newer than it.
 */
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";

export const ROOT = join(import.meta.dir, "..", "..");
export const EXE = join(ROOT, "dist", "train");
export const LIB = join(ROOT, "native", "build", process.platform === "darwin" ? "libgpt.dylib" : "libgpt.so");

function newestMtime(path: string): number {
  const s = statSync(path);
  if (!s.isDirectory()) return s.mtimeMs;
  return Math.max(s.mtimeMs, ...readdirSync(path).map((f) => newestMtime(join(path, f))));
}

export function sh(cmd: string[], opts: { cwd?: string; env?: Record<string, string> } = {}) {
  const p = Bun.spawnSync(cmd, { cwd: opts.cwd ?? ROOT, env: opts.env, stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode ?? -1, signal: p.signalCode ?? null, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

/** dist/train, rebuilt when the library, a source file or the build script is newer. */
export function ensureExe(): void {
  const native = sh([process.execPath, "scripts/build-native.ts"]);
  if (native.code !== 0) throw new Error(`build-native failed:\n${native.stderr}`);
  const inputs = Math.max(newestMtime(LIB), newestMtime(join(ROOT, "src")), newestMtime(join(ROOT, "scripts", "build-exe.ts")));
  if (existsSync(EXE) && statSync(EXE).mtimeMs >= inputs) return;
  const exe = sh([process.execPath, "scripts/build-exe.ts"]);
  if (exe.code !== 0) throw new Error(`build-exe failed:\n${exe.stdout}${exe.stderr}`);
}
