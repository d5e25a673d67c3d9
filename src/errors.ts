/**
 * How failures reach the user. An input problem (config, data, checkpoint, usage) is a
 * clear one-line-per-problem message and exit 2; anything else is a runtime failure, exit 1.
 */

/** Bad input from the user: the message names the file, what is wrong and what was expected. */
export class InputError extends Error {
  override name = "InputError";
}

/** The signals after which a run stops between steps, saving first. */
export type StopSignalName = "SIGINT" | "SIGTERM" | "SIGHUP";

/** The run stopped on a signal after saving; exit 128 + signal number, as shells do. */
export class Interrupted extends Error {
  override name = "Interrupted";
  constructor(readonly signal: StopSignalName, message: string) {
    super(message);
  }
}

const INPUT_ERROR_NAMES = new Set(["InputError", "ConfigError", "DataError", "CheckpointError"]);

export function exitCodeOf(e: unknown): number {
  if (e instanceof Interrupted) return e.signal === "SIGINT" ? 130 : e.signal === "SIGHUP" ? 129 : 143;
  if (e instanceof InputError || (e instanceof Error && INPUT_ERROR_NAMES.has(e.name))) return 2;
  return 1;
}
