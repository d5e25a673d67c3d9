#!/usr/bin/env bun
/**
 * train --phase {pretrain,sft,pipeline} --config PATH [--device mps|cpu] [--resume PATH | --no-resume]
 *
 * Flags only: everything else is in src/train. Exit codes: 0 done, 2 usage/config/data
 * errors (one clear message, no stack trace), 1 runtime failure, 130/143 interrupted.
 */
import { parseArgs, renderUsage, type ArgsDef, type CommandDef } from "citty";
import { exitCodeOf } from "./errors.ts";
import { runTraining, type RunRequest } from "./train/run.ts";

const args = {
  phase: { type: "string", description: "pretrain | sft | pipeline", valueHint: "phase", required: true },
  config: { type: "string", description: "path to the phase's JSON config", valueHint: "path", required: true },
  device: { type: "string", description: "mps | cpu (default: mps where a Metal device exists, else cpu)", valueHint: "device" },
  resume: {
    type: "string",
    description: "resume from this checkpoint; without it, checkpoints/latest.pt is resumed if present (--no-resume: start fresh)",
    valueHint: "path",
  },
} as const satisfies ArgsDef;

const command: CommandDef<typeof args> = {
  meta: { name: "train", description: "Pretrain and instruction-tune (SFT) a small GPT on token caches." },
  args,
};

class UsageError extends Error {}

function parseRequest(argv: string[]): RunRequest {
  const parsed = parseArgs(argv, args) as Record<string, unknown> & { _: string[] };
  const known = new Set(["_", "phase", "config", "device", "resume"]);
  const unknown = Object.keys(parsed).filter((k) => !known.has(k));
  if (unknown.length > 0) throw new UsageError(`unknown flag${unknown.length > 1 ? "s" : ""}: ${unknown.map((k) => `--${k}`).join(", ")}`);
  if (parsed._.length > 0) throw new UsageError(`unexpected argument: ${parsed._.join(" ")}`);
  const phase = parsed.phase;
  if (phase !== "pretrain" && phase !== "sft" && phase !== "pipeline") {
    throw new UsageError(`--phase must be one of pretrain, sft, pipeline${phase ? ` (got "${phase}")` : ""}`);
  }
  if (typeof parsed.config !== "string" || parsed.config === "") throw new UsageError("--config PATH is required");
  const device = parsed.device ?? "auto";
  if (device !== "auto" && device !== "mps" && device !== "cpu") throw new UsageError(`--device must be mps or cpu (got "${device}")`);
  const saysResume = argv.some((a) => a === "--resume" || a.startsWith("--resume="));
  const saysNoResume = argv.includes("--no-resume");
  if (saysResume && saysNoResume) throw new UsageError("--resume PATH and --no-resume contradict each other: give one of them");
  if (saysResume && (typeof parsed.resume !== "string" || parsed.resume === "")) throw new UsageError("--resume needs a checkpoint path");
  return {
    phase,
    configPath: parsed.config,
    device,
    resume: saysNoResume ? { kind: "none" } : saysResume ? { kind: "path", path: parsed.resume as string } : { kind: "auto" },
  };
}

export interface MainOptions {
  /** The compiled executable's embedded copy of the native library. */
  embeddedLibrary?: string;
}

export async function main(argv: string[], options: MainOptions = {}): Promise<number> {
  if (argv.includes("--help") || argv.includes("-h")) {
    console.log(await renderUsage(command));
    return 0;
  }
  let request: RunRequest;
  try {
    request = parseRequest(argv);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`train: ${e.message}\n\n${await renderUsage(command)}`);
    return 2;
  }
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
