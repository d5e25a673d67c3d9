/**
 * The one error type of the data layer. Every message names the file (when there is one),
 * what is wrong and what was expected; the CLI prints it as is and exits with code 2.
 */
import { InputError } from "../errors.ts";

export class DataError extends InputError {
  override name = "DataError";
  /** The file the problem is about, when there is one. */
  readonly file: string | undefined;

  constructor(message: string, file?: string) {
    super(file !== undefined && !message.includes(file) ? `${file}: ${message}` : message);
    this.file = file;
  }
}
