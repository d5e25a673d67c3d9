/**
 * The command line as a user meets it (subprocess `bun src/cli.ts ...` in a tiny REPO_ROOT):
 * --help, usage errors, missing caches, exit codes (0 done, 2 usage/config/data error,
 * 1 runtime failure), and that a refused run writes nothing.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import packageJson from "../package.json" with { type: "json" };
import { readMetrics } from "../src/train/metrics.ts";
import { makeTinyRepo } from "./helpers/repo.ts";


const CLI = join(import.meta.dir, "..", "src", "cli.ts");
/** The spec's flags, and --version (issue 24). */
const FLAGS = ["--config", "--device", "--no-resume", "--phase", "--resume", "--version"];

/** The environment of a user's terminal session piped to a file: no test/CI switches that hide colours. */
function userEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !["TEST", "CI", "NO_COLOR", "TRAIN_DEBUG"].includes(k)) env[k] = v;
  return { ...env, TERM: "xterm-256color", ...extra };
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function cli(args: string[], cwd: string, env: Record<string, string> = userEnv()): Run {
  const p = Bun.spawnSync([process.execPath, CLI, ...args], { cwd, env, stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode ?? -1, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

/** Paths listed in a missing-caches message (lines "  /abs/path    (why)"). */
function listedPaths(message: string): string[] {
  return message
    .split("\n")
    .map((l) => /^\s+(\/\S+)\s{2,}\(/.exec(l)?.[1])
    .filter((p): p is string => p !== undefined)
    .sort();
}

function cachePaths(root: string, kind: "streams" | "sft", names: string[]): string[] {
  return names.flatMap((n) => [join(root, "data/cache", kind, `${n}.bin`), join(root, "data/cache", kind, `${n}.bin.meta.json`)]);
}

const ANSI = /\u001b\[/;

describe("--help", () => {
  const repo = makeTinyRepo({ streams: false });
  for (const flag of ["--help", "-h"]) {
    test(`${flag}: exit 0, usage on stdout listing exactly the spec's flags and --version, no colour codes in a pipe`, () => {
      const r = cli([flag], repo.root);
      expect(r.code).toBe(0);
      expect(r.stderr).toBe("");
      expect(r.stdout).toContain("USAGE");
      expect(r.stdout).not.toMatch(ANSI);
      const listed = r.stdout
        .split("\n")
        .map((l) => /^\s+(?:-[a-zA-Z], )?(--[a-z-]+)/.exec(l)?.[1])
        .filter((f): f is string => f !== undefined)
        .sort();
      expect(listed).toEqual(FLAGS);
      for (const phase of ["pretrain", "sft", "pipeline"]) expect(r.stdout).toContain(phase);
      for (const device of ["mps", "cpu"]) expect(r.stdout).toContain(device);
    });
  }

  test("--help wins over other (even bad) flags and writes nothing", () => {
    const r = cli(["--phase", "nope", "--help", "--bogus"], repo.root);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("USAGE");
    expect(existsSync(join(repo.root, "checkpoints"))).toBe(false);
  });
});

describe("--version", () => {
  const repo = makeTinyRepo({ pretrain: { total_steps: 3, eval_every: 3, ckpt_every: 3 } });
  const git = Bun.spawnSync(["git", "-C", join(import.meta.dir, ".."), "rev-parse", "--short=12", "HEAD"], { stdout: "pipe", stderr: "ignore" });
  const commit = git.exitCode === 0 ? git.stdout.toString().trim() : "unknown";
  const native = JSON.parse(readFileSync(join(import.meta.dir, "..", "native", "build", `libgpt.${process.platform === "darwin" ? "dylib" : "so"}.build.json`), "utf8"));
  const version = () => {
    const r = cli(["--version"], repo.root);
    expect(r).toMatchObject({ code: 0, stderr: "" });
    return r.stdout;
  };

  test("--version and -V: one line, exit 0: version, git commit, platform, backends and BLAS", () => {
    const line = version();
    expect(line.endsWith("\n") && line.indexOf("\n") === line.length - 1).toBe(true);
    expect(line).toStartWith(`train ${packageJson.version} (commit ${commit}`); // "-dirty" may follow in a checkout with changes
    expect(line).toContain(`, ${process.platform}-${process.arch}, bun ${Bun.version}, backends ${native.backends.join("+")}, BLAS ${native.blas}, ${native.compiler})`);
    expect(native.backends).toContain("cpu");
    if (process.platform === "linux") expect(native.blas).toMatch(/^OpenBLAS \d+\.\d+\.\d+/);
    expect(cli(["-V"], repo.root).stdout).toBe(line);
    expect(cli(["--phase", "nope", "--version"], repo.root).stdout).toBe(line); // wins over other flags, like --help
    expect(existsSync(join(repo.root, "checkpoints"))).toBe(false);
  });

  test("a run's output starts with that line, and metrics.jsonl's first record holds it", () => {
    const line = version().trimEnd();
    const r = cli(["--phase", "pretrain", "--config", "configs/pretrain.json", "--device", "cpu"], repo.root);
    expect(r.code).toBe(0);
    expect(r.stdout.split("\n")[0]).toBe(line);
    const first = readMetrics(join(repo.root, "checkpoints", "metrics.jsonl"))[0]!;
    expect(first).toMatchObject({ phase: "pretrain", kind: "run", step: 0, version: line });
    // run again: finished, says so under the same first line; no second run record for the same build
    const again = cli(["--phase", "pretrain", "--config", "configs/pretrain.json", "--device", "cpu"], repo.root);
    expect(again.stdout.split("\n").slice(0, 2)).toEqual([line, expect.stringContaining("pretrain: already finished")]);
    expect(readMetrics(join(repo.root, "checkpoints", "metrics.jsonl")).filter((rec) => rec.kind === "run")).toHaveLength(1);
  });
});

describe("usage errors: exit 2, one clear line, then the usage", () => {
  const repo = makeTinyRepo({ streams: false });
  const cases: Array<[string, string[], string]> = [
    ["no arguments", [], "--phase and --config are required"],
    ["missing --config", ["--phase", "pretrain"], "--config PATH is required"],
    ["missing --phase", ["--config", "configs/pretrain.json"], "--phase is required"],
    ["bad --phase", ["--phase", "finetune", "--config", "configs/pretrain.json"], '--phase must be one of pretrain, sft, pipeline (got "finetune")'],
    ["bad --device", ["--phase", "pretrain", "--config", "configs/pretrain.json", "--device", "cuda"], '--device must be mps or cpu (got "cuda")'],
    ["unknown flag", ["--phase", "pretrain", "--config", "configs/pretrain.json", "--lr", "3"], "unknown flag: --lr"],
    ["unknown negated flag", ["--phase", "pretrain", "--config", "configs/pretrain.json", "--no-eval"], "unknown flag: --no-eval"],
    ["stray argument", ["--phase", "pretrain", "--config", "configs/pretrain.json", "extra"], "unexpected argument: extra"],
    ["--resume with --no-resume", ["--phase", "pretrain", "--config", "configs/pretrain.json", "--resume", "checkpoints/latest.pt", "--no-resume"], "--resume PATH and --no-resume contradict each other"],
    ["--no-resume before --resume=", ["--no-resume", "--resume=a.pt", "--phase", "pretrain", "--config", "configs/pretrain.json"], "contradict each other"],
    ["--resume without a path", ["--phase", "pretrain", "--config", "configs/pretrain.json", "--resume"], "--resume needs a value"],
    ["--phase without a value", ["--phase", "--config", "configs/pretrain.json"], "--phase needs a value"],
    ["a flag given twice", ["--phase", "pretrain", "--phase", "sft", "--config", "configs/pretrain.json"], "--phase given more than once"],
  ];
  for (const [name, args, message] of cases) {
    test(name, () => {
      const r = cli(args, repo.root);
      expect(r.code).toBe(2);
      expect(r.stdout).toBe("");
      expect(r.stderr.split("\n")[0]).toStartWith("train: ");
      expect(r.stderr.split("\n")[0]).toContain(message);
      expect(r.stderr).toContain("USAGE");
      expect(r.stderr).not.toMatch(ANSI);
      expect(r.stderr).not.toContain("    at "); // no stack trace
      expect(existsSync(join(repo.root, "checkpoints"))).toBe(false);
    });
  }

  test("--flag=value and --flag value are the same", () => {
    const r = cli(["--phase=pretrain", "--config=configs/none.json"], repo.root);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(`train: pretrain config ${join(repo.root, "configs/none.json")}: file not found\n`);
  });
});

describe("config and data errors: exit 2, the message alone, nothing written", () => {
  test("a config error: every problem, no usage, no stack", () => {
    const repo = makeTinyRepo({ streams: false });
    repo.writeConfig("p.json", { model_cfg_path: "configs/model.json", train_cfg: { B: 0, foo: 1 }, sources: { wiki: 1 } });
    const r = cli(["--phase", "pretrain", "--config", "configs/p.json"], repo.root);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`train: pretrain config ${join(repo.root, "configs/p.json")} is invalid:`);
    expect(r.stderr).toContain("/train_cfg/B:");
    expect(r.stderr).toContain('/train_cfg/foo: unknown key "foo"');
    expect(r.stderr).not.toContain("USAGE");
    expect(r.stderr).not.toContain("    at ");
    expect(existsSync(join(repo.root, "checkpoints"))).toBe(false);
  });

  test("pretrain without any cache: every missing path, the naming convention, no checkpoints folder", () => {
    const repo = makeTinyRepo({ streams: false });
    const r = cli(["--phase", "pretrain", "--config", "configs/pretrain.json"], repo.root);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe("");
    const expected = cachePaths(repo.root, "streams", ["wiki_train", "roam_train", "primer_train", "wiki_val"]).sort();
    expect(listedPaths(r.stderr)).toEqual(expected);
    expect(r.stderr).toContain("expected naming convention");
    expect(r.stderr).toContain(`${join(repo.root, "data/cache/streams")}/{source}_{split}.bin with source in wiki|roam|primer, split in train|val`);
    expect(r.stderr).toContain("<same path>.meta.json");
    expect(existsSync(join(repo.root, "checkpoints"))).toBe(false);
  });

  test("pretrain with two files missing lists exactly those two", () => {
    const repo = makeTinyRepo();
    const gone = [join(repo.root, "data/cache/streams/roam_train.bin"), join(repo.root, "data/cache/streams/wiki_val.bin.meta.json")];
    for (const f of gone) rmSync(f);
    const r = cli(["--phase", "pretrain", "--config", "configs/pretrain.json"], repo.root);
    expect(r.code).toBe(2);
    expect(listedPaths(r.stderr)).toEqual([...gone].sort());
    expect(r.stderr).toContain("roam train, training mixture");
    expect(r.stderr).toContain("wiki val, validation");
    expect(existsSync(join(repo.root, "checkpoints"))).toBe(false);
  });

  test("--phase sft with the streams present and the SFT caches absent: no fallback to pretrain data", () => {
    const repo = makeTinyRepo({ sft: false, sftVal: "wiki" });
    const r = cli(["--phase", "sft", "--config", "configs/sft.json"], repo.root);
    expect(r.code).toBe(2);
    expect(listedPaths(r.stderr)).toEqual(cachePaths(repo.root, "sft", ["dolly_train", "oasst1_train", "primer_train"]).sort());
    expect(r.stderr).toContain("no fallback to the pretraining streams");
    expect(r.stderr).toContain(`${join(repo.root, "data/cache/sft")}/{source}_{split}.bin with source in dolly|oasst1|primer`);
    expect(existsSync(join(repo.root, "checkpoints"))).toBe(false);
  });

  // Checked before pretraining (src/train/run.ts): a late refusal would cost the whole pretrain.
  test("--phase pipeline with the SFT caches absent is refused before pretraining", () => {
    const repo = makeTinyRepo({ sft: false });
    const r = cli(["--phase", "pipeline", "--config", "configs/pipeline.json"], repo.root);
    expect(r.code).toBe(2);
    expect(listedPaths(r.stderr)).toContain(join(repo.root, "data/cache/sft/dolly_train.bin"));
    expect(existsSync(join(repo.root, "checkpoints"))).toBe(false);
  });

  test("--device mps on a machine without Metal", () => {
    if (process.platform === "darwin") return; // a Mac may have a Metal device
    const repo = makeTinyRepo();
    const r = cli(["--phase", "pretrain", "--config", "configs/pretrain.json", "--device", "mps"], repo.root);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("--device mps: no Metal device");
    expect(r.stderr).toContain("--device cpu");
    expect(existsSync(join(repo.root, "checkpoints"))).toBe(false);
  });

  test("--resume of a file that does not exist", () => {
    const repo = makeTinyRepo();
    const r = cli(["--phase", "pretrain", "--config", "configs/pretrain.json", "--resume", "checkpoints/nope.pt"], repo.root);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("--resume checkpoints/nope.pt: no such checkpoint file");
    expect(existsSync(join(repo.root, "checkpoints"))).toBe(false);
  });
});

describe("exit codes of runs", () => {
  test("0: a finished run, its checkpoints on disk, progress on stdout", () => {
    const repo = makeTinyRepo({ pretrain: { total_steps: 4, eval_every: 2, ckpt_every: 2 } });
    const r = cli(["--phase", "pretrain", "--config", "configs/pretrain.json", "--device", "cpu"], repo.root);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe("");
    expect(readdirSync(join(repo.root, "checkpoints")).sort()).toEqual(["best.pt", "latest.pt", "loss.svg", "metrics.jsonl", "step_0000002.pt", "step_0000004.pt"]);
    expect(r.stdout).toContain("run summary");
  });

  test("1: a runtime failure (training diverges), one message, no stack trace unless TRAIN_DEBUG", () => {
    const repo = makeTinyRepo({ pretrain: { total_steps: 8, base_lr: 1e30, min_lr: 1e29, warmup_steps: 0 } });
    const r = cli(["--phase", "pretrain", "--config", "configs/pretrain.json"], repo.root);
    expect(r.code).toBe(1);
    expect(r.stderr).toStartWith("train: training diverged");
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    const debug = cli(["--phase", "pretrain", "--config", "configs/pretrain.json", "--no-resume"], repo.root, userEnv({ TRAIN_DEBUG: "1" }));
    expect(debug.code).toBe(1);
    expect(debug.stderr).toContain("    at ");
  });
});
