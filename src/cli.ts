#!/usr/bin/env bun
/**
 * train --phase {pretrain,sft,pipeline} --config PATH [--device mps|cpu] [--resume PATH | --no-resume]
 *
 * Flags only: everything else is in src/train. Exit codes: 0 done, 2 usage/config/data
 * errors (one clear message, no stack trace), 1 runtime failure, 130/143/129 interrupted
 * (SIGINT/SIGTERM/SIGHUP).
 */
import { renderUsage, type ArgsDef, type CommandDef } from "citty";
import { stripVTControlCharacters } from "node:util";
import { exitCodeOf, InputError } from "./errors.ts";
import { runTraining, type RunRequest } from "./train/run.ts";

const args = {
  phase: { type: "string", description: "pretrain | sft | pipeline", valueHint: "phase", required: true },
  config: { type: "string", description: "path to the phase's JSON config", valueHint: "path", required: true },
  device: { type: "string", description: "mps | cpu (default: mps where a Metal device exists, else cpu)", valueHint: "device" },
  resume: {
    type: "string",
    description: "resume from this checkpoint (default: checkpoints/latest.pt of the phase if present)",
    valueHint: "path",
  },
  "no-resume": { type: "boolean", description: "start fresh even if checkpoints/latest.pt exists" },
} as const satisfies ArgsDef;

const command: CommandDef<typeof args> = {
  meta: { name: "train", description: "Pretrain and instruction-tune (SFT) a small GPT on token caches." },
  args,
};

/** Flags that take a value (--flag VALUE or --flag=VALUE) and switches. */
const VALUE_FLAGS = new Set(["phase", "config", "device", "resume"]);
const SWITCHES = new Set(["no-resume", "help", "h"]);

class UsageError extends InputError {
  override name = "UsageError";
}

/**
 * Checks the shape of argv ourselves (citty's parser is lenient: it would take
 * `--no-foo` for `--foo=false` and let a repeated flag silently win), then reads the values.
 */
function parseRequest(argv: string[]): RunRequest {
  const unknown: string[] = [];
  const positional: string[] = [];
  const values = new Map<string, string>();
  const counts = new Map<string, number>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--") {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (!a.startsWith("-") || a === "-") {
      positional.push(a);
      continue;
    }
    const eq = a.indexOf("=");
    const name = (eq < 0 ? a : a.slice(0, eq)).replace(/^--?/, "");
    if (VALUE_FLAGS.has(name) && a.startsWith("--")) {
      let value: string | undefined = eq < 0 ? undefined : a.slice(eq + 1);
      if (value === undefined && i + 1 < argv.length && !argv[i + 1]!.startsWith("--")) value = argv[++i];
      if (value === undefined || value === "") throw new UsageError(`--${name} needs a value${name === "resume" ? " (a checkpoint path)" : ""}`);
      values.set(name, value);
    } else if (SWITCHES.has(name) && (a.startsWith("--") || name === "h")) {
      if (eq >= 0) throw new UsageError(`--${name} takes no value (got "${a}")`);
      values.set(name, "");
    } else {
      unknown.push(eq < 0 ? a : a.slice(0, eq));
      continue;
    }
    counts.set(name, (counts.get(name) ?? 0) + 1);
  }
  if (unknown.length > 0) throw new UsageError(`unknown flag${unknown.length > 1 ? "s" : ""}: ${unknown.join(", ")}`);
  if (positional.length > 0) throw new UsageError(`unexpected argument${positional.length > 1 ? "s" : ""}: ${positional.join(" ")}`);
  const repeated = [...counts].filter(([, n]) => n > 1).map(([k]) => `--${k}`);
  if (repeated.length > 0) throw new UsageError(`${repeated.join(", ")} given more than once`);

  const phase = values.get("phase");
  const config = values.get("config");
  if (phase === undefined && config === undefined) throw new UsageError("--phase and --config are required");
  if (phase === undefined) throw new UsageError("--phase is required (pretrain, sft or pipeline)");
  if (phase !== "pretrain" && phase !== "sft" && phase !== "pipeline") {
    throw new UsageError(`--phase must be one of pretrain, sft, pipeline (got "${phase}")`);
  }
  if (config === undefined) throw new UsageError("--config PATH is required");
  const device = values.get("device") ?? "auto";
  if (device !== "mps" && device !== "cpu" && device !== "auto") throw new UsageError(`--device must be mps or cpu (got "${device}")`);
  const resume = values.get("resume");
  const noResume = values.has("no-resume");
  if (resume !== undefined && noResume) throw new UsageError("--resume PATH and --no-resume contradict each other: give one of them");
  return {
    phase,
    configPath: config,
    device,
    resume: noResume ? { kind: "none" } : resume !== undefined ? { kind: "path", path: resume } : { kind: "auto" },
  };
}

/** citty colours its usage text; not in a pipe or a file. */
async function usageFor(stream: NodeJS.WriteStream): Promise<string> {
  const text = await renderUsage(command);
  return stream.isTTY ? text : stripVTControlCharacters(text);
}

export interface MainOptions {
  /** The compiled executable's embedded copy of the native library. */
  embeddedLibrary?: string;
}

export async function main(argv: string[], options: MainOptions = {}): Promise<number> {
  const end = argv.indexOf("--");
  const flags = end < 0 ? argv : argv.slice(0, end);
  if (flags.includes("--help") || flags.includes("-h")) {
    console.log(await usageFor(process.stdout));
    return 0;
  }
  let request: RunRequest;
  try {
    request = parseRequest(argv);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`train: ${e.message}\n\n${await usageFor(process.stderr)}`);
    return 2;
  }
  // A closed stdout or stderr (`train | head`, a `tee` ended by the same Ctrl-C) loses the
  // output, not the run: without a listener the write error would end the process mid-step.
  for (const stream of [process.stdout, process.stderr]) stream.on("error", () => {});
  try {
    return await runTraining(request, { repoRoot: process.cwd(), out: process.stdout, libraryPath: options.embeddedLibrary });
  } catch (e) {
    const code = exitCodeOf(e);
    const err = e as Error;
    console.error(code === 1 && process.env.TRAIN_DEBUG ? err.stack : `train: ${err.message ?? String(e)}`);
    return code;
  }
}

if (import.meta.main) {
  process.exitCode = await main(process.argv.slice(2));
}
