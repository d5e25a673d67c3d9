/**
 * Set-up profiles (issue 17): each npm command installs only what it needs. The demo's
 * profile is read from package.json's own "demo" script and its apt list from
 * scripts/setup.sh --print-packages, the list the script installs; on Debian/Ubuntu the
 * list's whole dependency closure (apt-cache, no recommends) is checked too, so a build
 * package that drags PyTorch in fails here.
 */
import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..");
const SCRIPTS: Record<string, string> = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).scripts;

function sh(cmd: string[]) {
  const p = Bun.spawnSync(cmd, { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode ?? -1, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

/** The setup.sh profile an npm script runs ("bash scripts/setup.sh demo && ..." -> "demo"). */
function profileOf(script: string): string {
  const m = /bash scripts\/setup\.sh(?: (\w+))?/.exec(SCRIPTS[script] ?? "");
  if (!m) throw new Error(`package.json script "${script}" does not run scripts/setup.sh`);
  return m[1] ?? "test";
}

function packagesOf(profile: string): string[] {
  const r = sh(["bash", "scripts/setup.sh", profile, "--print-packages"]);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  return r.stdout.split("\n").filter(Boolean);
}

const apt = sh(["sh", "-c", "command -v apt-cache"]).code === 0;

/** Every package apt would install for these (Depends and PreDepends only, as setup.sh installs with --no-install-recommends). */
function aptClosure(packages: string[]): Set<string> {
  const r = sh(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
    "--no-breaks", "--no-replaces", "--no-enhances", ...packages]);
  expect(r.code).toBe(0);
  return new Set(r.stdout.split("\n").filter((l) => l && !l.startsWith(" ")).map((l) => l.replace(/^<|>$/g, "")));
}

describe("setup profiles", () => {
  test("npm run demo installs no PyTorch and no Python; npm test and npm run bench install PyTorch", () => {
    const demo = packagesOf(profileOf("demo"));
    expect(demo).toContain("gcc");
    expect(demo).toContain("libopenblas-dev");
    expect(demo.filter((p) => p.startsWith("python"))).toEqual([]);
    for (const script of ["test", "bench"]) expect(packagesOf(profileOf(script))).toContain("python3-torch");
  });

  test("npm run release takes the cross toolchain and no PyTorch; npm test takes it too (tests/release.test.ts)", () => {
    const release = packagesOf(profileOf("release"));
    expect(release).toContain("gcc-aarch64-linux-gnu");
    expect(release).toContain("libopenblas-dev:arm64");
    expect(release.filter((p) => p.startsWith("python"))).toEqual([]);
    expect(packagesOf(profileOf("test"))).toEqual(expect.arrayContaining(release));
    expect(packagesOf(profileOf("demo")).filter((p) => p.includes("aarch64") || p.includes(":arm64") || p.includes("qemu"))).toEqual([]);
  });

  test("a bad profile is refused with a message and exit 2", () => {
    const r = sh(["bash", "scripts/setup.sh", "demos"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("unknown argument 'demos'");
  });

  test.skipIf(!apt)("the demo profile's apt dependency closure has no python3-torch (skips where apt-cache is missing: not Debian/Ubuntu)", () => {
    const demo = aptClosure(packagesOf(profileOf("demo")));
    expect(demo.has("libopenblas-dev")).toBe(true);
    expect([...demo].filter((p) => p.includes("torch"))).toEqual([]);
    // The check can see torch: the test profile's closure has it.
    expect(aptClosure(packagesOf(profileOf("test"))).has("python3-torch")).toBe(true);
  }, 60_000);
});
