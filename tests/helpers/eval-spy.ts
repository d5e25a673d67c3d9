/**
 * Which batches the evals of a `train` subprocess ran on: started with
 * `bun --preload EVAL_SPY_PRELOAD`, the run appends one line per NativeModel.evalLoss call,
 * the digest of the (x, y) it was given, to EVAL_SPY_LOG in its working directory.
 */
import { createHash } from "node:crypto";
import { join } from "node:path";

export const EVAL_SPY_PRELOAD = join(import.meta.dir, "eval-spy-preload.ts");
export const EVAL_SPY_LOG = "eval-spy.log";

/** The digest of one batch, as logged. */
export function batchDigest(x: Int32Array, y: Int32Array): string {
  const bytes = (a: Int32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  return createHash("sha256").update(bytes(x)).update(bytes(y)).digest("hex");
}
