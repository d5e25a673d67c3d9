#!/usr/bin/env bun
/**
 * train --phase {pretrain,sft,pipeline} --config PATH [--device mps|cpu] [--resume PATH | --no-resume]
 * train prepare-data text|dolly|oasst1 ...   (src/prepare/command.ts)
 * train sample --checkpoint PATH [--prompt TEXT] ...   (src/sample/command.ts)
 * train --version | -V                       the build, in one line (src/version.ts)
 *
 * The commands are citty commands; this file only reads the command line and reports how
 * it ended. Exit codes: 0 done, 2 usage/config/data/checkpoint errors (one clear message,
 * no stack trace), 1 runtime failure, 130/143/129 interrupted (SIGINT/SIGTERM/SIGHUP);
 * each error carries its code (src/errors.ts).
 */
import { defineCommand, parseArgs, renderUsage, type ArgsDef, type CommandDef } from "citty";
import { stripVTControlCharacters } from "node:util";
import { defaultLibraryPath } from "./backend/native.ts";
import { exitCodeOf, InputError } from "./errors.ts";
import { prepareDataCommand } from "./prepare/command.ts";
import { SELFTEST_ENV, selfTestChild } from "./backend/selftest.ts";
import { sampleCommand } from "./sample/command.ts";
import { runTraining, type RunRequest } from "./train/run.ts";
import { checkoutBuildInfo, versionLine, type BuildInfo } from "./version.ts";

const trainArgs = {
  phase: { type: "string", description: "pretrain | sft | pipeline", valueHint: "phase", required: true },
  config: { type: "string", description: "path to the phase's JSON config", valueHint: "path", required: true },
  device: { type: "string", description: "mps | cpu (default: mps where the Metal device passes a self-test, else cpu)", valueHint: "device" },
  resume: {
    type: "string",
    description: "resume from this checkpoint (default: checkpoints/latest.pt of the phase if present)",
    valueHint: "path",
  },
  "no-resume": { type: "boolean", description: "start fresh even if checkpoints/latest.pt exists" },
  version: { type: "boolean", alias: "V", description: "print the version, git commit, platform, backends and BLAS of this build, and exit" },
} as const satisfies ArgsDef;

/** The commands besides training, by their first word. */
const subCommands: Record<string, CommandDef<any>> = { "prepare-data": prepareDataCommand, sample: sampleCommand };

const trainCommand: CommandDef<typeof trainArgs> = {
  meta: { name: "train", description: "Pretrain and instruction-tune (SFT) a small GPT on token caches." },
  args: trainArgs,
  subCommands,
};

/** A bad command line: the message, then the usage of the command it was for. */
class UsageError extends InputError {
  override name = "UsageError";
  constructor(
    message: string,
    readonly command: CommandDef<any> = trainCommand,
    readonly parent?: CommandDef<any>,
  ) {
    super(message);
  }
}

/**
 * The strictness layer: reads the training flags from their ArgsDef (the one that renders
 * the help), refusing what citty's lenient parser would let through: unknown flags (it
 * would take `--no-foo` for `--foo=false`), a repeated flag (it would let the last win),
 * stray arguments, a flag without its value.
 */
function strictFlags(argv: string[], def: ArgsDef): Map<string, string> {
  const unknown: string[] = [];
  const positional: string[] = [];
  const values = new Map<string, string>();
  const counts = new Map<string, number>();
  const kindOf = (name: string) => (name === "help" || name === "h" ? "boolean" : def[name]?.type);
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
    const kind = kindOf(name);
    if (kind === "string" && a.startsWith("--")) {
      let value: string | undefined = eq < 0 ? undefined : a.slice(eq + 1);
      if (value === undefined && i + 1 < argv.length && !argv[i + 1]!.startsWith("--")) value = argv[++i];
      if (value === undefined || value === "") throw new UsageError(`--${name} needs a value${name === "resume" ? " (a checkpoint path)" : ""}`);
      values.set(name, value);
    } else if (kind === "boolean" && (a.startsWith("--") || name === "h")) {
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
  return values;
}

/** The training run the command line asks for. */
function parseRequest(argv: string[]): RunRequest {
  const values = strictFlags(argv, trainArgs);
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

/**
 * A subcommand's leaf (`prepare-data text`), the arguments after its name, and a parent
 * that names the words before it (for its usage line: `train prepare-data text`).
 */
interface Leaf {
  command: CommandDef<any>;
  parent: CommandDef<any>;
  argv: string[];
}

function findLeaf(command: CommandDef<any>, argv: string[], before: string, help: boolean): Leaf {
  const parent = { meta: { name: before } };
  const path = `${before} ${(command.meta as { name: string }).name}`;
  const subs = command.subCommands as Record<string, CommandDef<any>> | undefined;
  if (subs === undefined) return { command, parent, argv };
  const name = argv[0];
  if (name === undefined || name.startsWith("-")) {
    if (help) return { command, parent, argv };
    throw new UsageError(`${path} needs a command: ${Object.keys(subs).join(", ")}`, command, parent);
  }
  const sub = subs[name];
  if (sub === undefined) throw new UsageError(`unknown command "${name}" for ${path}: expected one of ${Object.keys(subs).join(", ")}`, command, parent);
  return findLeaf(sub, argv.slice(1), path, help);
}

/** Runs a subcommand with citty's parser (its options as in scripts/, lenient as there);
 * the command gets main's options as citty's `data` (the embedded library). */
async function runSubCommand(name: string, argv: string[], help: boolean, options: MainOptions): Promise<number> {
  const leaf = findLeaf(subCommands[name]!, argv, "train", help);
  if (help) {
    console.log(await usageFor(process.stdout, leaf.command, leaf.parent));
    return 0;
  }
  let args;
  try {
    args = parseArgs(leaf.argv, (leaf.command.args ?? {}) as ArgsDef);
  } catch (e) {
    throw new UsageError(stripVTControlCharacters((e as Error).message), leaf.command, leaf.parent);
  }
  await leaf.command.run?.({ rawArgs: leaf.argv, args, cmd: leaf.command, data: options });
  return 0;
}

/**
 * A command's usage text. citty colours it: not in a pipe or a file. Training's own usage
 * line shows its flags alone (citty would append the subcommands' names to it); the
 * subcommands follow in a list of their own.
 */
async function usageFor(stream: NodeJS.WriteStream, command: CommandDef<any> = trainCommand, parent?: CommandDef<any>): Promise<string> {
  let text: string;
  if (command === trainCommand) {
    const names = Object.keys(subCommands);
    const width = Math.max(...names.map((n) => n.length));
    const list = names.map((n) => `  ${n.padEnd(width)}    ${(subCommands[n]!.meta as { description: string }).description}`);
    text = `${(await renderUsage({ ...trainCommand, subCommands: undefined })).trimEnd()}\n\nCOMMANDS\n\n${list.join("\n")}\n\nUse train <command> --help for more information about a command.`;
  } else text = await renderUsage(command, parent);
  return stream.isTTY ? text : stripVTControlCharacters(text);
}

export interface MainOptions {
  /** The compiled executable's embedded copy of the native library. */
  embeddedLibrary?: string;
  /** The compiled executable's build description (a checkout asks git and the library's build file). */
  build?: BuildInfo;
}

/** Runs the command line `argv` (without the program name); returns the exit code. */
export async function main(argv: string[], options: MainOptions = {}): Promise<number> {
  // A child started by the device self-test (src/backend/selftest.ts), not a command line.
  if (process.env[SELFTEST_ENV] !== undefined) return selfTestChild(options.embeddedLibrary);
  const end = argv.indexOf("--");
  const flags = end < 0 ? argv : argv.slice(0, end);
  const help = flags.includes("--help") || flags.includes("-h");
  const sub = argv[0] !== undefined && Object.hasOwn(subCommands, argv[0]) ? argv[0] : undefined;
  if (help && sub === undefined) {
    console.log(await usageFor(process.stdout));
    return 0;
  }
  const version = () => versionLine(options.build ?? checkoutBuildInfo(defaultLibraryPath()));
  if (sub === undefined && (flags.includes("--version") || flags.includes("-V"))) {
    console.log(version());
    return 0;
  }
  // A closed stdout or stderr (`train | head`, a `tee` ended by the same Ctrl-C) loses the
  // output, not the run: without a listener the write error would end the process mid-step.
  for (const stream of [process.stdout, process.stderr]) stream.on("error", () => {});
  try {
    if (sub !== undefined) return await runSubCommand(sub, argv.slice(1), help, options);
    const request = parseRequest(argv);
    return await runTraining(request, { repoRoot: process.cwd(), out: process.stdout, libraryPath: options.embeddedLibrary, version: version() });
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`train: ${e.message}\n\n${await usageFor(process.stderr, e.command, e.parent)}`);
      return e.exitCode;
    }
    const code = exitCodeOf(e);
    const err = e as Error;
    console.error(code === 1 && process.env.TRAIN_DEBUG ? err.stack : `train: ${err.message ?? String(e)}`);
    return code;
  }
}

if (import.meta.main) {
  process.exitCode = await main(process.argv.slice(2));
}
