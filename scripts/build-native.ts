/**
 * Builds the native library (native/include/gpt.h) with the system C compiler:
 *   Linux: native/build/libgpt.so, OpenBLAS linked statically (no libopenblas.so or
 *          libgfortran needed at run time; checked with ldd after linking).
 *   macOS: native/build/libgpt.dylib with Accelerate, plus native/mps/*.m (Metal,
 *          MPSGraph) when present.
 * Beside the library, <library>.build.json says what it was built with (backends, BLAS, compiler:
 * src/version.ts reads it for `train --version`).
 * Skips the build when the library is newer than every file under native/ and this script.
 *
 *   bun scripts/build-native.ts            build if out of date
 *   bun scripts/build-native.ts --force    always rebuild
 *   GPT_SANITIZE=1 bun scripts/build-native.ts   ASan+UBSan build into libgpt-asan.so (for C tests)
 *   bun scripts/build-native.ts --target linux-arm64    cross-build native/build/linux-arm64/libgpt.so
 *       (aarch64-linux-gnu-gcc, and libopenblas-dev:arm64 from Debian multiarch)
 *   bun scripts/build-native.ts --target darwin-arm64 --macos-sdk DIR --accelerate DIR
 *       cross-build native/build/darwin-arm64/libgpt.dylib with scripts/check-mps.sh (which
 *       compiles, checks and links it against the SDK); MACOS_SDK / MACOS_ACCELERATE_FRAMEWORK
 *       may stand for the two options.
 * Environment: CC (default cc, the host build only), OPENBLAS_LIB (path of libopenblas.a).
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { basename, dirname, join, relative } from "node:path";
import { parseArgs } from "node:util";
import { nativeBuildInfoPath, type NativeBuildInfo } from "../src/version.ts";

export const ROOT = join(import.meta.dir, "..");
export const NATIVE = join(ROOT, "native");
export const BUILD_DIR = join(NATIVE, "build");

const isMac = process.platform === "darwin";

/** What a library (and a release binary, scripts/release.ts) is built for: os-arch. */
export const TARGETS = ["linux-x64", "linux-arm64", "darwin-arm64"] as const;
export type Target = (typeof TARGETS)[number];

/** This machine as os-arch (it may be none of TARGETS, e.g. darwin-x64: it still builds for itself). */
export function hostTarget(): string {
  return `${process.platform}-${process.arch}`;
}

/** The C compiler of a Linux target built on another machine (Debian's cross compilers). */
const CROSS_CC: Record<string, string> = { "linux-arm64": "aarch64-linux-gnu-gcc", "linux-x64": "x86_64-linux-gnu-gcc" };

/** A macOS SDK and the Accelerate.framework to build against, as scripts/check-mps.sh takes them. */
export interface MacSdk {
  sdk: string;
  accelerate: string;
}

/** The SDK named by MACOS_SDK and MACOS_ACCELERATE_FRAMEWORK, or null when either is unset. */
export function macSdkFromEnv(): MacSdk | null {
  const sdk = process.env.MACOS_SDK;
  const accelerate = process.env.MACOS_ACCELERATE_FRAMEWORK;
  return sdk && accelerate ? { sdk, accelerate } : null;
}

export class BuildError extends Error {
  override name = "BuildError";
}

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

function run(cmd: string[], cwd: string = ROOT): RunResult {
  const p = Bun.spawnSync(cmd, { cwd, stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode ?? 1, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

/** The C compiler: $CC or cc, checked to exist. */
export function compiler(): string {
  const cc = process.env.CC ?? "cc";
  if (!Bun.which(cc)) {
    throw new BuildError(
      `C compiler '${cc}' not found on PATH: install one (Debian: apt-get install build-essential; macOS: xcode-select --install) or set CC`,
    );
  }
  return cc;
}

function multiarch(cc: string): string | null {
  const r = run([cc, "-print-multiarch"]);
  const s = r.stdout.trim();
  return r.code === 0 && s ? s : null;
}

export interface BlasConfig {
  /** Its name and version, e.g. "OpenBLAS 0.3.21 pthread" (for `train --version`). */
  name: string;
  /** Extra include directories (where cblas.h is). */
  includes: string[];
  /** Link arguments (static archive and what it needs). */
  libs: string[];
}

/** Where the static OpenBLAS archive and its cblas.h are (Linux). */
export function openblasConfig(cc: string = compiler()): BlasConfig {
  const arch = multiarch(cc);
  const libDirs = [
    ...(arch ? [`/usr/lib/${arch}/openblas-pthread`, `/usr/lib/${arch}/openblas-openmp`, `/usr/lib/${arch}`] : []),
    "/usr/lib64/openblas-pthread",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/opt/OpenBLAS/lib",
  ];
  const candidates = process.env.OPENBLAS_LIB ? [process.env.OPENBLAS_LIB] : libDirs.map((d) => join(d, "libopenblas.a"));
  const lib = candidates.find((p) => existsSync(p));
  if (!lib) {
    throw new BuildError(
      `static OpenBLAS (libopenblas.a) not found in ${candidates.join(", ")}: install it with 'apt-get install libopenblas-dev' or set OPENBLAS_LIB=/path/to/libopenblas.a`,
    );
  }
  // cblas.h next to the archive's flavour (Debian: /usr/include/<arch>/openblas-pthread), else the default path
  const flavour = basename(dirname(lib));
  const incCandidates = [
    ...(arch && flavour.startsWith("openblas") ? [`/usr/include/${arch}/${flavour}`] : []),
    join(dirname(lib), "..", "include"),
    ...(arch ? [`/usr/include/${arch}`] : []),
    "/usr/include/openblas",
    "/usr/include",
  ];
  const inc = incCandidates.find((d) => existsSync(join(d, "cblas.h")));
  if (!inc) throw new BuildError(`cblas.h not found (looked in ${incCandidates.join(", ")}): apt-get install libopenblas-dev`);
  // openblas_config.h, installed beside cblas.h: #define OPENBLAS_VERSION " OpenBLAS 0.3.21 "
  const configH = join(inc, "openblas_config.h");
  const version = existsSync(configH) ? /OPENBLAS_VERSION\s+"\s*OpenBLAS\s+([^"\s]+)/.exec(readFileSync(configH, "utf8"))?.[1] : undefined;
  const name = ["OpenBLAS", version ?? "(version unknown)", ...(flavour.startsWith("openblas-") ? [flavour.slice("openblas-".length)] : [])].join(" ");
  return { name, includes: [inc], libs: [lib, "-lm", "-lpthread"] };
}

/** The BLAS to compile and link against: Accelerate on macOS, static OpenBLAS elsewhere. */
export function blasConfig(cc: string = compiler()): BlasConfig {
  return isMac ? { name: "Accelerate", includes: [], libs: ["-framework", "Accelerate"] } : openblasConfig(cc);
}

/** Compiles a C test or benchmark program (its sources plus any of native/cpu) with the
 * library's flags and BLAS into `out`. Throws BuildError with the compiler's output. */
export function buildProgram(sources: string[], out: string): string {
  const cc = compiler();
  const blas = blasConfig(cc);
  mkdirSync(dirname(out), { recursive: true });
  const cmd = [
    cc,
    ...cflags(false, cc).filter((f) => f !== "-fvisibility=hidden"),
    ...blas.includes.map((d) => `-I${d}`),
    `-I${join(NATIVE, "cpu")}`,
    ...sources,
    "-o",
    out,
    ...blas.libs,
  ];
  const r = run(cmd);
  if (r.code !== 0) throw new BuildError(`compiling ${basename(out)} failed:\n${cmd.join(" ")}\n${r.stderr || r.stdout}`);
  return out;
}

function isGcc(cc: string): boolean {
  return /Free Software Foundation/.test(run([cc, "--version"]).stdout);
}

/** The compiler's name and version, e.g. "gcc 12.2.0" or "clang 15.0.0". */
function compilerName(cc: string): string {
  const gcc = isGcc(cc);
  const v = run([cc, gcc ? "-dumpfullversion" : "-dumpversion"]); // gcc's -dumpversion is the major alone
  return `${gcc ? "gcc" : "clang"} ${v.code === 0 ? v.stdout.trim() : "(version unknown)"}`;
}

/** Flags of every C file of the library (and of the C test programs). */
export function cflags(sanitize: boolean, cc: string = compiler()): string[] {
  const opt = sanitize ? ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined"] : ["-O3"];
  return [
    ...opt,
    "-fPIC",
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fvisibility=hidden",
    "-fno-math-errno",
    "-ffp-contract=fast",
    "-pthread",
    // macOS 12 is the oldest system with every MPSGraph call native/mps makes (docs/mps.md)
    ...(isMac ? ["-Wno-deprecated-declarations", "-mmacosx-version-min=12.0"] : []),
    // GCC notes that 32-byte vectors change the ABI without AVX: they only cross static inline functions.
    // Loops start on 64-byte lines: a GEMM micro-kernel's loop (116 bytes) spread over three
    // lines instead of two ran the whole S1 step 2-3 % slower, by where the linker put it
    ...(isGcc(cc) ? ["-Wno-psabi", "-falign-loops=64"] : []),
  ];
}

function listFiles(dir: string, ext: string[]): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      if (p !== BUILD_DIR) out.push(...listFiles(p, ext));
    } else if (ext.some((x) => e.name.endsWith(x))) out.push(p);
  }
  return out.sort();
}

export function libraryPath(sanitize = process.env.GPT_SANITIZE === "1"): string {
  return join(BUILD_DIR, `libgpt${sanitize ? "-asan" : ""}.${isMac ? "dylib" : "so"}`);
}

/** The library is newer than its inputs, and its build description (src/version.ts) is there. */
function upToDate(out: string, inputs: string[]): boolean {
  if (!existsSync(out) || !existsSync(nativeBuildInfoPath(out))) return false;
  const t = statSync(out).mtimeMs;
  return inputs.every((p) => statSync(p).mtimeMs < t);
}

/** Checks on Linux that the library needs no shared BLAS or Fortran runtime. A cross-built
 * library cannot go through the host's ldd: its NEEDED entries are read with readelf. */
function checkLinkage(out: string, cross: boolean): void {
  if (isMac) return;
  if (cross) {
    const r = run(["readelf", "--dynamic", out]);
    if (r.code !== 0) throw new BuildError(`readelf --dynamic ${out} failed: ${r.stderr || r.stdout}`);
    const needed = r.stdout.split("\n").filter((l) => l.includes("(NEEDED)"));
    if (needed.length === 0) throw new BuildError(`readelf listed no NEEDED library of ${out} (expected at least libc)`);
    const bad = needed.filter((l) => /openblas|gfortran|libblas|liblapack/.test(l));
    if (bad.length > 0) throw new BuildError(`${out} depends at run time on:\n${bad.join("\n")}\n(OpenBLAS must be linked statically)`);
    return;
  }
  if (!Bun.which("ldd")) return;
  const r = run(["ldd", out]);
  if (r.code !== 0) throw new BuildError(`ldd ${out} failed: ${r.stderr || r.stdout}`);
  const bad = r.stdout.split("\n").filter((l) => /openblas|gfortran|libblas|liblapack|not found/.test(l));
  if (bad.length > 0) {
    throw new BuildError(`${out} depends at run time on:\n${bad.join("\n")}\n(OpenBLAS must be linked statically)`);
  }
}

export interface BuildOptions {
  force?: boolean;
  sanitize?: boolean;
  quiet?: boolean;
  /** Another machine's library (default: this machine's, native/build/libgpt.*). */
  target?: Target | string;
  /** The SDK of a darwin target built on Linux (default: macSdkFromEnv()). */
  macSdk?: MacSdk | null;
}

/** Where the library of a target goes: the host's in native/build, another's in native/build/<target>. */
export function targetLibraryPath(target: Target | string): string {
  if (target === hostTarget()) return libraryPath(false);
  return join(BUILD_DIR, target, `libgpt.${target.startsWith("darwin") ? "dylib" : "so"}`);
}

/** Builds the library if needed; returns its path. Throws BuildError with the compiler's output. */
export async function buildNative(opts: BuildOptions = {}): Promise<string> {
  const target = opts.target ?? hostTarget();
  const cross = target !== hostTarget();
  const sanitize = opts.sanitize ?? process.env.GPT_SANITIZE === "1";
  if (cross && sanitize) throw new BuildError(`a sanitizer build is for this machine only, not ${target}`);
  const out = cross ? targetLibraryPath(target) : libraryPath(sanitize);
  const inputs = [...listFiles(NATIVE, [".c", ".h", ".m", ".metal"]), join(ROOT, "scripts", "build-native.ts")];
  if (cross && target.startsWith("darwin")) {
    if (!opts.force && upToDate(out, [...inputs, join(ROOT, "scripts", "check-mps.sh")])) return out;
    return buildDarwinOnLinux(out, opts.macSdk ?? macSdkFromEnv(), opts.quiet ?? false);
  }
  // native/mps (Objective-C + MPSGraph, and its C dispatch table) is built on macOS only
  const mpsDir = join(NATIVE, "mps");
  const cSources = listFiles(NATIVE, [".c"]).filter((p) => isMac || !p.startsWith(mpsDir + "/"));
  const mSources = isMac ? listFiles(mpsDir, [".m"]) : [];
  if (!opts.force && upToDate(out, inputs)) return out;

  const cc = cross ? CROSS_CC[target] : compiler();
  if (!cc) throw new BuildError(`no cross compiler for ${target} is known (from ${hostTarget()}): targets ${Object.keys(CROSS_CC).join(", ")}`);
  if (cross && !Bun.which(cc)) throw new BuildError(`cross compiler '${cc}' for ${target} not found on PATH (Debian: apt-get install gcc-${cc.replace(/-gcc$/, "")})`);
  // objects in a private directory and the library renamed into place: concurrent
  // builds (several test processes) never see each other's half-written files
  mkdirSync(dirname(out), { recursive: true });
  const objDir = mkdtempSync(join(BUILD_DIR, "obj-"));
  try {
    return await compileAndLink(cc, sanitize, cross, out, objDir, cSources, mSources, opts.quiet ?? false);
  } finally {
    rmSync(objDir, { recursive: true, force: true });
  }
}

/** Writes `<library>.build.json` (what `train --version` says of the library), replaced whole. */
function writeBuildInfo(library: string, info: NativeBuildInfo): void {
  const path = nativeBuildInfoPath(library);
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(info) + "\n");
  renameSync(tmp, path);
}

/** The macOS library built on Linux: scripts/check-mps.sh compiles (-Werror), checks the
 * API availability and links it against the SDK; its dylib is the one a release embeds. */
function buildDarwinOnLinux(out: string, sdk: MacSdk | null, quiet: boolean): string {
  if (!sdk) throw new BuildError("no macOS SDK: pass --macos-sdk DIR --accelerate DIR or set MACOS_SDK and MACOS_ACCELERATE_FRAMEWORK (docs/mps.md)");
  mkdirSync(BUILD_DIR, { recursive: true });
  const checkDir = mkdtempSync(join(BUILD_DIR, "check-mps-"));
  try {
    const p = Bun.spawnSync(["bash", join(ROOT, "scripts", "check-mps.sh"), sdk.sdk, sdk.accelerate], {
      cwd: ROOT,
      env: { ...process.env, CHECK_MPS_OUT: checkDir },
      stdout: "pipe",
      stderr: "pipe",
    });
    if (p.exitCode !== 0) throw new BuildError(`scripts/check-mps.sh failed (exit ${p.exitCode}):\n${p.stdout.toString()}${p.stderr.toString()}`);
    mkdirSync(dirname(out), { recursive: true });
    writeBuildInfo(out, { backends: ["cpu", "mps"], blas: "Accelerate", compiler: compilerName(process.env.CLANG ?? "clang") });
    renameSync(join(checkDir, "libgpt.dylib"), out);
  } finally {
    rmSync(checkDir, { recursive: true, force: true });
  }
  if (!quiet) console.log(`built ${relative(ROOT, out)} (scripts/check-mps.sh: PASS)`);
  return out;
}

async function compileAndLink(
  cc: string,
  sanitize: boolean,
  cross: boolean,
  out: string,
  objDir: string,
  cSources: string[],
  mSources: string[],
  quiet: boolean,
): Promise<string> {
  const defines = mSources.length > 0 ? ["-DGPT_HAVE_MPS"] : [];
  const blas = blasConfig(cc);
  const flags = [...cflags(sanitize, cc), ...defines, ...blas.includes.map((d) => `-I${d}`)];

  // compile every source to its own object, all at once
  const jobs = [...cSources, ...mSources].map((src) => {
    const obj = join(objDir, relative(NATIVE, src).replace(/[\\/]/g, "_") + ".o");
    // graph-building errors are Objective-C exceptions that native/mps turns into messages
    const extra = src.endsWith(".m") ? ["-fobjc-arc", "-fobjc-arc-exceptions", "-Wno-deprecated-declarations"] : [];
    const cmd = [cc, ...flags.filter((f) => !(src.endsWith(".m") && f === "-std=c11")), ...extra, "-c", src, "-o", obj];
    return { src, obj, proc: Bun.spawn(cmd, { cwd: ROOT, stdout: "ignore", stderr: "pipe" }) };
  });
  const failures: string[] = [];
  await Promise.all(
    jobs.map(async (j) => {
      const [code, stderr] = await Promise.all([j.proc.exited, new Response(j.proc.stderr).text()]);
      if (code !== 0) failures.push(`${relative(ROOT, j.src)}:\n${stderr}`);
    }),
  );
  if (failures.length > 0) throw new BuildError(`compiling the native library failed:\n${failures.join("\n")}`);

  const tmp = join(objDir, basename(out));
  const link = isMac
    ? [
        cc,
        "-dynamiclib",
        "-mmacosx-version-min=12.0",
        "-install_name",
        `@rpath/${basename(out)}`,
        ...(sanitize ? ["-fsanitize=address,undefined"] : []),
        ...jobs.map((j) => j.obj),
        "-o",
        tmp,
        ...blas.libs,
        ...(mSources.length > 0
          ? // CoreGraphics: a command-line process must link it for MTLCreateSystemDefaultDevice() to find a GPU
            ["-framework", "Metal", "-framework", "MetalPerformanceShaders", "-framework", "MetalPerformanceShadersGraph", "-framework", "Foundation", "-framework", "CoreGraphics"]
          : []),
      ]
    : [
        cc,
        "-shared",
        "-pthread",
        ...(sanitize ? ["-fsanitize=address,undefined"] : ["-Wl,-z,defs"]),
        "-Wl,--exclude-libs,ALL",
        ...jobs.map((j) => j.obj),
        "-o",
        tmp,
        ...blas.libs,
      ];
  const r = run(link);
  if (r.code !== 0) throw new BuildError(`linking ${basename(out)} failed:\n${r.stderr || r.stdout}`);
  checkLinkage(tmp, cross);
  writeBuildInfo(out, { backends: ["cpu", ...(mSources.length > 0 ? ["mps"] : [])], blas: blas.name, compiler: compilerName(cc) });
  renameSync(tmp, out);
  if (!quiet) console.log(`built ${relative(ROOT, out)}`);
  return out;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: { force: { type: "boolean" }, target: { type: "string" }, "macos-sdk": { type: "string" }, accelerate: { type: "string" } },
  });
  try {
    if (values.target !== undefined && !(TARGETS as readonly string[]).includes(values.target)) {
      console.error(`build-native: --target ${values.target} is not one of ${TARGETS.join(", ")}`);
      process.exit(2);
    }
    const sdk = values["macos-sdk"] && values.accelerate ? { sdk: values["macos-sdk"], accelerate: values.accelerate } : undefined;
    await buildNative({ force: values.force, target: values.target as Target | undefined, macSdk: sdk });
  } catch (e) {
    console.error((e as Error).message);
    process.exit(1);
  }
}
