/**
 * How failures reach the user. Each error the CLI reports knows its exit code: an input
 * problem (InputError and its family: usage, config, data, checkpoint) is a clear
 * one-line-per-problem message and exit 2; an interrupted run exits 128 + the signal's
 * number; anything else is a runtime failure, exit 1.
 */
import { constants } from "node:os";

/** An error that carries the exit code the CLI ends with. */
export abstract class ExitError extends Error {
  abstract readonly exitCode: number;
}

/**
 * Bad input from the user (usage, config, data, checkpoint): the message names the file,
 * what is wrong and what was expected. Exit 2.
 */
export class InputError extends ExitError {
  override name = "InputError";
  readonly exitCode = 2;
}

/** The signals after which a run stops between steps, saving first. */
export type StopSignalName = "SIGINT" | "SIGTERM" | "SIGHUP";

/** The run stopped on a signal after saving; exit 128 + signal number, as shells do. */
export class Interrupted extends ExitError {
  override name = "Interrupted";
  readonly exitCode: number;
  constructor(readonly signal: StopSignalName, message: string) {
    super(message);
    this.exitCode = 128 + constants.signals[signal];
  }
}

export function exitCodeOf(e: unknown): number {
  return e instanceof ExitError ? e.exitCode : 1;
}
