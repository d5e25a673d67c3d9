/**
 * The single executable (issue 5): dist/train, built by scripts/build-native.ts +
 * scripts/build-exe.ts (reused when newer than everything it is built from), copied alone
 * into a tiny REPO_ROOT and run without bun or node on PATH; its embedded native library
 * needs no OpenBLAS / gfortran shared library; and it still runs when its temp folder is
 * mounted noexec (src/backend/native.ts then loads a copy from the cache folder).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadCheckpoint } from "../src/checkpoint/checkpoint.ts";
import { readMetrics } from "../src/train/metrics.ts";
import { readNativeBuildInfo } from "../src/version.ts";
import { ensureExe, EXE, LIB, ROOT, sh } from "./helpers/exe.ts";
import { makeTinyRepo, TINY_MODEL, TINY_TRAIN, type TinyRepo } from "./helpers/repo.ts";

const linux = process.platform === "linux";

/** A clean environment: no bun or node on PATH, HOME and TMPDIR of the test's own. */
function bareEnv(home: string, tmp: string, path = "/usr/bin:/bin"): Record<string, string> {
  return { PATH: path, HOME: home, TMPDIR: tmp, LANG: "C" };
}

const made: string[] = []; // each holds a 100+ MB copy of the exe: removed after the tests
afterAll(() => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

/** The tiny repo with dist/train copied in, its own HOME and TMPDIR. */
function exeRepo(): TinyRepo & { home: string; tmp: string } {
  const repo = makeTinyRepo({ pretrain: { total_steps: 6, eval_every: 3, ckpt_every: 3 } });
  made.push(repo.root);
  copyFileSync(EXE, join(repo.root, "train"));
  const home = join(repo.root, "home");
  const tmp = join(repo.root, "tmp");
  mkdirSync(home);
  mkdirSync(tmp);
  return { ...repo, home, tmp };
}

function expectCheckpoints(root: string): void {
  expect(readdirSync(join(root, "checkpoints")).sort()).toEqual(["best.pt", "latest.pt", "loss.svg", "metrics.jsonl", "step_0000003.pt", "step_0000006.pt"]);
  const latest = loadCheckpoint(join(root, "checkpoints", "latest.pt"), TINY_MODEL);
  expect(latest.step).toBe(6);
  expect(latest.opt!.step).toBe(6);
  expect(Number.isFinite(latest.bestValLoss!)).toBe(true);
  expect(latest.bestValLoss!).toBeLessThan(Math.log(TINY_MODEL.V));
}

/** Shared libraries a file needs, as ldd lists them. */
function lddNames(file: string): string[] {
  const r = sh(["ldd", file]);
  expect(r.code).toBe(0);
  expect(r.stdout).not.toContain("not found");
  return r.stdout
    .split("\n")
    .map((l) => l.trim().split(/\s+/)[0] ?? "")
    .filter((n) => n !== "");
}

beforeAll(ensureExe, 120_000);

describe("dist/train alone", () => {
  test("bun is not on the PATH the exe gets", () => {
    expect(sh(["sh", "-c", "command -v bun || echo none"], { env: { PATH: "/usr/bin:/bin" } }).stdout.trim()).toBe("none");
  });

  test("a short pretrain in an empty folder with tiny caches, PATH=/usr/bin:/bin", () => {
    const repo = exeRepo();
    const r = sh(["./train", "--phase", "pretrain", "--config", "configs/pretrain.json", "--device", "cpu"], { cwd: repo.root, env: bareEnv(repo.home, repo.tmp) });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("run summary");
    expectCheckpoints(repo.root);
  });

  test("--version: the build's commit, backends and BLAS embedded (no git, no library file needed); the first line of a run and of metrics.jsonl", () => {
    const repo = exeRepo();
    const empty = join(repo.root, "empty-bin"); // no git on PATH: the commit is the one embedded at build time
    mkdirSync(empty);
    const env = bareEnv(repo.home, repo.tmp, empty);
    const v = sh(["./train", "--version"], { cwd: repo.root, env });
    expect(v).toMatchObject({ code: 0, stderr: "" });
    const native = readNativeBuildInfo(LIB)!;
    const line = v.stdout.trimEnd();
    expect(line).toMatch(new RegExp(`^train \\d+\\.\\d+\\.\\d+ \\(commit [0-9a-f]{12}(-dirty)?, ${process.platform}-${process.arch}, bun [0-9.]+, backends ${native.backends.join("\\+")}, BLAS .+\\)$`));
    expect(line).toEndWith(`BLAS ${native.blas}, ${native.compiler})`);
    expect(sh(["./train", "-V"], { cwd: repo.root, env }).stdout).toBe(v.stdout);
    const r = sh(["./train", "--phase", "pretrain", "--config", "configs/pretrain.json", "--device", "cpu"], { cwd: repo.root, env });
    expect(r.code).toBe(0);
    expect(r.stdout.split("\n")[0]).toBe(line);
    expect(readMetrics(join(repo.root, "checkpoints", "metrics.jsonl"))[0]).toMatchObject({ kind: "run", step: 0, version: line });
  });

  test("no PATH at all: the exe spawns no tool (node, bun or other)", () => {
    const repo = exeRepo();
    const empty = join(repo.root, "empty-bin");
    mkdirSync(empty);
    const r = sh([join(repo.root, "train"), "--phase", "pretrain", "--config", "configs/pretrain.json"], { cwd: repo.root, env: bareEnv(repo.home, repo.tmp, empty) });
    expect(r.code).toBe(0);
    expectCheckpoints(repo.root);
  });

  test("the exe is the whole product: in an empty folder (no repo, no bun, no node) prepare-data text builds caches from a text file, then pretrain trains on them", () => {
    const dir = mkdtempSync(join(tmpdir(), "train-alone-"));
    made.push(dir);
    copyFileSync(EXE, join(dir, "train"));
    const home = join(dir, "home");
    const tmp = join(dir, "tmp");
    const bin = join(dir, "bin"); // the PATH: nothing in it (this machine has a node in /usr/bin)
    for (const d of [home, tmp, bin]) mkdirSync(d);
    const env = bareEnv(home, tmp, bin);
    expect(sh(["/bin/sh", "-c", "command -v bun || command -v node || echo none"], { env }).stdout.trim()).toBe("none");
    const lines = Array.from({ length: 50 }, (_, i) => `Line ${i}: the quick brown fox jumps over the lazy dog ${i % 7} times.`);
    writeFileSync(join(dir, "corpus.txt"), `${lines.join("\n")}\n`);

    const prep = sh(["./train", "prepare-data", "text", "--source", "wiki", "--docs", "line", "--val-fraction", "0.2", "--out", "data/cache", "corpus.txt"], { cwd: dir, env });
    expect(prep.stderr).toBe("");
    expect(prep.code).toBe(0);
    expect(prep.stdout).toContain("data/cache/streams/wiki_train.bin: ");
    for (const split of ["train", "val"]) {
      for (const file of [`wiki_${split}.bin`, `wiki_${split}.bin.meta.json`]) expect(existsSync(join(dir, "data/cache/streams", file))).toBe(true);
    }

    mkdirSync(join(dir, "configs"));
    writeFileSync(join(dir, "configs/model.json"), JSON.stringify(TINY_MODEL));
    const train_cfg = { ...TINY_TRAIN, total_steps: 6, eval_every: 3, ckpt_every: 3 };
    writeFileSync(join(dir, "configs/pretrain.json"), JSON.stringify({ model_cfg_path: "configs/model.json", train_cfg, sources: { wiki: 1 }, val_source: "wiki" }));
    const r = sh(["./train", "--phase", "pretrain", "--config", "configs/pretrain.json", "--device", "cpu"], { cwd: dir, env });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expectCheckpoints(dir);
  });

  test("its exit codes: --help 0, a usage error 2 with the usage, missing caches 2 with nothing written", () => {
    const repo = exeRepo();
    const env = bareEnv(repo.home, repo.tmp);
    const help = sh(["./train", "--help"], { cwd: repo.root, env });
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("--no-resume");
    const usage = sh(["./train", "--phase", "pretrain"], { cwd: repo.root, env });
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain("--config PATH is required");
    const sft = sh(["./train", "--phase", "sft", "--config", "configs/sft.json"], { cwd: repo.root, env });
    expect(sft.code).toBe(2);
    expect(sft.stderr).toContain(join(repo.root, "data/cache/sft/dolly_train.bin"));
    expect(existsSync(join(repo.root, "checkpoints"))).toBe(false);
  });
});

describe.skipIf(!linux)("the embedded native library (Linux)", () => {
  test("native/build/libgpt.so links no OpenBLAS and no gfortran dynamically", () => {
    const names = lddNames(LIB);
    expect(names.some((n) => n.startsWith("libc.so"))).toBe(true); // ldd did list the dependencies
    expect(names.filter((n) => /openblas|gfortran|quadmath|libblas|liblapack/.test(n))).toEqual([]);
  });

  test("the copy the exe extracts (to its TMPDIR) is that library, with the same dependencies", () => {
    const repo = exeRepo();
    const r = sh(["./train", "--phase", "pretrain", "--config", "configs/pretrain.json"], { cwd: repo.root, env: bareEnv(repo.home, repo.tmp) });
    expect(r.code).toBe(0);
    const extracted = readdirSync(repo.tmp).filter((f) => f.endsWith(".so"));
    expect(extracted).toHaveLength(1);
    const file = join(repo.tmp, extracted[0]!);
    expect(readFileSync(file).equals(readFileSync(LIB))).toBe(true);
    expect(lddNames(file).filter((n) => /openblas|gfortran/.test(n))).toEqual([]);
  });
});

/** A noexec tmpfs (root only; skipped where mounting is not allowed). */
function mountNoexec(): string | null {
  if (!linux || process.getuid?.() !== 0) return null;
  const dir = mkdtempSync(join(tmpdir(), "train-noexec-"));
  if (sh(["mount", "-t", "tmpfs", "-o", "noexec,nosuid,size=128m", "tmpfs", dir]).code !== 0) {
    rmSync(dir, { recursive: true, force: true });
    return null;
  }
  return dir;
}

const noexec = mountNoexec();
afterAll(() => {
  if (noexec === null) return;
  sh(["umount", noexec]);
  rmSync(noexec, { recursive: true, force: true });
});

describe.skipIf(noexec === null)("TMPDIR on a noexec mount", () => {
  test("the exe falls back to a copy in ~/.cache/train and trains", () => {
    const repo = exeRepo();
    const r = sh(["./train", "--phase", "pretrain", "--config", "configs/pretrain.json"], { cwd: repo.root, env: bareEnv(repo.home, noexec!) });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expectCheckpoints(repo.root);
    const cacheDir = join(repo.home, ".cache", "train");
    const copies = readdirSync(cacheDir).filter((f) => f.endsWith(".so"));
    expect(copies).toHaveLength(1);
    expect(readFileSync(join(cacheDir, copies[0]!)).equals(readFileSync(LIB))).toBe(true);
    expect(lddNames(join(cacheDir, copies[0]!)).filter((n) => /openblas|gfortran/.test(n))).toEqual([]);
    // a second run reuses the copy (named by content hash) instead of adding one
    rmSync(join(repo.root, "checkpoints"), { recursive: true });
    expect(sh(["./train", "--phase", "pretrain", "--config", "configs/pretrain.json"], { cwd: repo.root, env: bareEnv(repo.home, noexec!) }).code).toBe(0);
    expect(readdirSync(cacheDir).filter((f) => f.endsWith(".so"))).toEqual(copies);
  });

  test("XDG_CACHE_HOME is where the copy goes when set", () => {
    const repo = exeRepo();
    const xdg = join(repo.root, "xdg");
    const r = sh(["./train", "--phase", "pretrain", "--config", "configs/pretrain.json"], { cwd: repo.root, env: { ...bareEnv(repo.home, noexec!), XDG_CACHE_HOME: xdg } });
    expect(r.code).toBe(0);
    expect(readdirSync(join(xdg, "train")).filter((f) => f.endsWith(".so"))).toHaveLength(1);
    expect(existsSync(join(repo.home, ".cache"))).toBe(false);
  });
});
