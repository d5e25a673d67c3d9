/**
 * Builds the release executables on one Linux machine (npm run release):
 *   dist/release/train-linux-x64, train-linux-arm64, train-darwin-arm64 and SHA256SUMS.
 * Each is `bun build --compile` of src/cli.ts with that target's native library embedded
 * (scripts/build-native.ts --target, cross-built) on that target's Bun runtime: the npm
 * package @oven/bun-<os>-<arch> of our `bun` devDependency's version, fetched with
 * `npm pack` and checked against the integrity package-lock.json pins for it.
 *
 *   bun scripts/release.ts [--target linux-arm64,darwin-arm64] [--out DIR]
 *                          [--macos-sdk DIR --accelerate DIR]
 *
 * darwin-arm64 needs a macOS SDK (as scripts/check-mps.sh: --macos-sdk/--accelerate or
 * MACOS_SDK/MACOS_ACCELERATE_FRAMEWORK); without one it is skipped with one line. Its
 * executable is checked before it is listed: Mach-O arm64, the embedded dylib
 * byte-identical to the one built, a valid ad-hoc signature (scripts/macho.ts).
 * Exit 2 on a bad option, 1 when a build or check fails.
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { parseArgs } from "node:util";
import { compileExecutable } from "./build-exe.ts";
import { BuildError, buildNative, macSdkFromEnv, ROOT, TARGETS, type MacSdk, type Target } from "./build-native.ts";
import { describe, readMachO, sectionBytes } from "./macho.ts";

export class ReleaseError extends Error {
  override name = "ReleaseError";
}

/** Bun's name of each target: its --target and the npm package of its runtime. */
export const BUN_TARGETS: Record<Target, { bunTarget: string; runtimePackage: string }> = {
  "linux-x64": { bunTarget: "bun-linux-x64", runtimePackage: "@oven/bun-linux-x64" },
  "linux-arm64": { bunTarget: "bun-linux-arm64", runtimePackage: "@oven/bun-linux-aarch64" },
  "darwin-arm64": { bunTarget: "bun-darwin-arm64", runtimePackage: "@oven/bun-darwin-aarch64" },
};

/** ELF e_machine of the Linux targets (checked on each executable built). */
const ELF_MACHINE: Partial<Record<Target, number>> = { "linux-x64": 0x3e, "linux-arm64": 0xb7 };

/** Where fetched runtime packages are kept (npm's own cache also holds them). */
export const RUNTIME_CACHE = join(ROOT, "node_modules", ".cache", "train-release");

/** The version and integrity package-lock.json pins for an npm package (our bun's version). */
export function pinnedPackage(name: string): { version: string; integrity: string } {
  const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8"));
  const lock = JSON.parse(readFileSync(join(ROOT, "package-lock.json"), "utf8"));
  const bunVersion: string = pkg.devDependencies?.bun;
  const entry = lock.packages?.[`node_modules/${name}`];
  if (!entry?.integrity || !entry.version) throw new ReleaseError(`package-lock.json pins no version and integrity for ${name} (run npm install)`);
  if (entry.version !== bunVersion) throw new ReleaseError(`package-lock.json has ${name}@${entry.version}, package.json's bun is ${bunVersion} (run npm install)`);
  return { version: entry.version, integrity: entry.integrity };
}

/** "sha512-<base64>" of a file's bytes, as npm's integrity field. */
function integrityOf(bytes: Uint8Array, algorithm: string): string {
  return `${algorithm}-${createHash(algorithm).update(bytes).digest("base64")}`;
}

/**
 * The runtime of a target, verified: the package's tarball (npm pack) must match the
 * lockfile's integrity, then its bin/bun is extracted into `into`. Returns its path.
 */
export function fetchRuntime(target: Target, into: string, cache: string = RUNTIME_CACHE): string {
  const name = BUN_TARGETS[target].runtimePackage;
  const { version, integrity } = pinnedPackage(name);
  mkdirSync(cache, { recursive: true });
  const tarball = join(cache, `${name.replace("@", "").replace("/", "-")}-${version}.tgz`);
  if (!existsSync(tarball)) {
    const p = Bun.spawnSync(["npm", "pack", `${name}@${version}`, "--pack-destination", cache, "--silent"], { stdout: "pipe", stderr: "pipe" });
    if (p.exitCode !== 0 || !existsSync(tarball)) throw new ReleaseError(`npm pack ${name}@${version} failed:\n${p.stderr.toString()}`);
  }
  const [algorithm] = integrity.split("-", 1);
  const got = integrityOf(readFileSync(tarball), algorithm!);
  if (got !== integrity) {
    rmSync(tarball);
    throw new ReleaseError(`${name}@${version}: the tarball's integrity is ${got}, package-lock.json pins ${integrity} (removed it; nothing was built from it)`);
  }
  mkdirSync(into, { recursive: true });
  const x = Bun.spawnSync(["tar", "-xzf", tarball, "-C", into, "package/bin/bun"], { stdout: "pipe", stderr: "pipe" });
  if (x.exitCode !== 0) throw new ReleaseError(`extracting bin/bun from ${tarball} failed: ${x.stderr.toString()}`);
  return join(into, "package", "bin", "bun");
}

function sha256(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

/** Checks a darwin executable: arm64, its dylib embedded unchanged, a valid ad-hoc signature. */
export function checkDarwinExecutable(exe: string, library: string): string {
  const bytes = readFileSync(exe);
  const m = readMachO(bytes);
  const problems: string[] = [];
  if (m.cpu !== "arm64" || m.fileType !== "execute") problems.push(`a Mach-O ${m.cpu} ${m.fileType}, not an arm64 executable`);
  if (!m.signature) problems.push("no code signature (arm64 macOS runs no unsigned code)");
  else problems.push(...m.signature.problems);
  if (m.signature && !m.signature.adhoc) problems.push("the signature is not ad-hoc (bun build --compile re-signs ad-hoc)");
  const bunSection = sectionBytes(bytes, m, "__BUN", "__bun");
  if (!bunSection) problems.push("no __BUN,__bun section (where bun build --compile puts the bundled files)");
  else if (Buffer.from(bunSection).indexOf(readFileSync(library)) < 0) problems.push(`${relative(ROOT, library)} is not embedded byte for byte`);
  if (problems.length > 0) throw new ReleaseError(`${relative(ROOT, exe)}: ${problems.join("; ")}`);
  return describe(relative(ROOT, exe), m);
}

function checkElf(exe: string, target: Target): void {
  const head = readFileSync(exe).subarray(0, 20);
  const machine = head.readUInt16LE(18);
  if (head.readUInt32BE(0) !== 0x7f454c46 || machine !== ELF_MACHINE[target]) {
    throw new ReleaseError(`${relative(ROOT, exe)} is not an ELF executable for ${target} (e_machine 0x${machine.toString(16)})`);
  }
}

export interface ReleaseOptions {
  targets: Target[];
  out: string;
  macSdk: MacSdk | null;
  log?: (line: string) => void;
}

/** Builds the executables of `targets` (darwin ones skipped without an SDK) and SHA256SUMS. */
export async function release(opts: ReleaseOptions): Promise<Array<{ file: string; bytes: number; sha256: string }>> {
  const log = opts.log ?? console.log;
  mkdirSync(opts.out, { recursive: true });
  // a SHA256SUMS lists exactly this run's executables: older ones go first
  for (const f of readdirSync(opts.out)) if (f.startsWith("train-") || f === "SHA256SUMS") rmSync(join(opts.out, f));
  mkdirSync(RUNTIME_CACHE, { recursive: true });
  const runtimes = mkdtempSync(join(RUNTIME_CACHE, "runtimes-"));
  const built: Array<{ file: string; bytes: number; sha256: string }> = [];
  try {
    for (const target of opts.targets) {
      if (target.startsWith("darwin") && !opts.macSdk && process.platform !== "darwin") {
        log(`release: skipping ${target}: no macOS SDK (--macos-sdk DIR --accelerate DIR, or MACOS_SDK and MACOS_ACCELERATE_FRAMEWORK; docs/mps.md)`);
        continue;
      }
      const library = await buildNative({ target, force: true, quiet: true, macSdk: opts.macSdk });
      const runtime = fetchRuntime(target, join(runtimes, target));
      const exe = join(opts.out, `train-${target}`);
      const code = compileExecutable({ library, outfile: exe, bunTarget: BUN_TARGETS[target].bunTarget, runtime });
      if (code !== 0) throw new ReleaseError(`bun build --compile for ${target} failed (exit ${code})`);
      if (target.startsWith("darwin")) log(`release: ${checkDarwinExecutable(exe, library)}`);
      else checkElf(exe, target);
      built.push({ file: `train-${target}`, bytes: statSync(exe).size, sha256: sha256(exe) });
    }
  } finally {
    rmSync(runtimes, { recursive: true, force: true });
  }
  // the format of sha256sum / shasum -a 256: "<hex>  <file>"
  writeFileSync(join(opts.out, "SHA256SUMS"), built.map((b) => `${b.sha256}  ${b.file}\n`).join(""));
  for (const b of built) log(`release: ${b.file.padEnd(20)} ${String(b.bytes).padStart(10)} bytes (${(b.bytes / 2 ** 20).toFixed(1)} MiB)  sha256 ${b.sha256}`);
  log(`release: wrote ${built.length} executables and SHA256SUMS to ${relative(ROOT, opts.out) || "."}`);
  return built;
}

if (import.meta.main) {
  const options = {
    target: { type: "string", multiple: true },
    out: { type: "string", default: join(ROOT, "dist", "release") },
    "macos-sdk": { type: "string" },
    accelerate: { type: "string" },
  } as const;
  let values: ReturnType<typeof parseArgs<{ options: typeof options }>>["values"];
  try {
    values = parseArgs({ args: process.argv.slice(2), options }).values;
  } catch (e) {
    console.error(`release: ${(e as Error).message} (usage: bun scripts/release.ts [--target T,...] [--out DIR] [--macos-sdk DIR --accelerate DIR])`);
    process.exit(2);
  }
  const targets = (values.target ?? [TARGETS.join(",")]).flatMap((t) => t.split(",")).filter((t) => t !== "");
  const unknown = targets.filter((t) => !(TARGETS as readonly string[]).includes(t));
  if (unknown.length > 0 || targets.length === 0) {
    console.error(`release: --target ${unknown.join(",")} is not one of ${TARGETS.join(", ")}`);
    process.exit(2);
  }
  if (Boolean(values["macos-sdk"]) !== Boolean(values.accelerate)) {
    console.error("release: --macos-sdk and --accelerate go together (the SDK, and the Accelerate.framework to link)");
    process.exit(2);
  }
  const macSdk = values["macos-sdk"] ? { sdk: values["macos-sdk"], accelerate: values.accelerate! } : macSdkFromEnv();
  try {
    await release({ targets: [...new Set(targets)] as Target[], out: values.out, macSdk });
  } catch (e) {
    if (!(e instanceof ReleaseError || e instanceof BuildError)) throw e;
    console.error(`release: ${e.message}`);
    process.exit(1);
  }
}
