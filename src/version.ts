/**
 * The version line: which build made a result. `train --version` prints it, every run prints it
 * first, and metrics.jsonl records it (a "run" record, src/train/metrics.ts):
 *
 *   train 0.1.0 (commit 93cb72e5f3a1, linux-x64, bun 1.3.5, backends cpu, BLAS OpenBLAS 0.3.21 pthread, gcc 12.2.0)
 *
 * Where its parts come from:
 *  - version: package.json;
 *  - commit: the executable has it embedded by scripts/build-exe.ts; a checkout
 *    (`bun run src/cli.ts`) asks git, "-dirty" when tracked files differ from it;
 *  - backends, BLAS and C compiler of the native library: written beside the library by
 *    scripts/build-native.ts (`<library>.build.json`), embedded in the executable with it.
 *    (The library itself does not say yet; see nativeBuildInfoPath.)
 * A part that cannot be known reads "unknown": the line is always printed.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import packageJson from "../package.json" with { type: "json" };

/** What scripts/build-native.ts knows of the library it built. */
export interface NativeBuildInfo {
  /** Backends compiled in, e.g. ["cpu"] or ["cpu", "mps"]. */
  backends: string[];
  /** The BLAS linked in, e.g. "OpenBLAS 0.3.21 pthread" or "Accelerate". */
  blas: string;
  /** The C compiler, e.g. "gcc 12.2.0". */
  compiler: string;
}

export interface BuildInfo {
  /** Git commit of the sources (12 hex digits, "-dirty" if they had changes), or null. */
  commit: string | null;
  native: NativeBuildInfo | null;
}

/** The native library's build description, written beside it by scripts/build-native.ts. */
export function nativeBuildInfoPath(libraryPath: string): string {
  return `${libraryPath}.build.json`;
}

/** The build description of the library at `libraryPath`, or null when absent or unreadable. */
export function readNativeBuildInfo(libraryPath: string): NativeBuildInfo | null {
  const path = nativeBuildInfoPath(libraryPath);
  if (!existsSync(path)) return null;
  try {
    const v = JSON.parse(readFileSync(path, "utf8")) as Partial<NativeBuildInfo>;
    const ok = Array.isArray(v.backends) && v.backends.every((b) => typeof b === "string") && typeof v.blas === "string" && typeof v.compiler === "string";
    return ok ? { backends: v.backends!, blas: v.blas!, compiler: v.compiler! } : null;
  } catch {
    return null;
  }
}

/** The commit checked out at `dir` (12 hex digits, "-dirty" with uncommitted changes to tracked files), or null without git. */
export function gitCommit(dir: string): string | null {
  const git = (...args: string[]): string | null => {
    try {
      const p = Bun.spawnSync(["git", "-C", dir, ...args], { stdout: "pipe", stderr: "ignore" });
      return p.exitCode === 0 ? p.stdout.toString().trim() : null;
    } catch {
      return null; // no git on PATH
    }
  };
  const head = git("rev-parse", "--short=12", "HEAD");
  if (head === null || !/^[0-9a-f]{12,}$/.test(head)) return null;
  const changes = git("status", "--porcelain", "--untracked-files=no");
  return changes === null || changes === "" ? head : `${head}-dirty`;
}

/** The build of a checkout: git, and the build description of the library at `libraryPath`. */
export function checkoutBuildInfo(libraryPath: string): BuildInfo {
  return { commit: gitCommit(join(import.meta.dir, "..")), native: readNativeBuildInfo(libraryPath) };
}

/** The one-line description of the build (see top). */
export function versionLine(build: BuildInfo): string {
  const native = build.native;
  const parts = [
    `commit ${build.commit ?? "unknown"}`,
    `${process.platform}-${process.arch}`,
    `bun ${Bun.version}`,
    `backends ${native ? native.backends.join("+") : "unknown"}`,
    `BLAS ${native?.blas ?? "unknown"}`,
    native?.compiler ?? "compiler unknown",
  ];
  return `train ${packageJson.version} (${parts.join(", ")})`;
}
