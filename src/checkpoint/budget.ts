/**
 * Budgets of a checkpoint read: what a hostile .pt may make the reader do. The pickle
 * reader builds at most one object per opcode byte (so objects, memo entries and stack
 * are bounded by data.pkl's size); what remains bounded here is what is not:
 *   - integers: at most MAX_INT_BYTES bytes (LONG1/LONG4) or digits (INT/LONG text), so
 *     no decode is slow;
 *   - the plain values converted to JSON (model_cfg, train_cfg): nesting depth and node
 *     count, so shared (memo) sub-lists cannot expand exponentially and cycles end;
 *   - tensors: a tensor never has more elements than its storage (no stride-0 expansion),
 *     and the model a checkpoint declares must fit in the bytes of its file, so the floats
 *     decoded stay within a small multiple of the file size.
 * docs/errors.md lists these limits.
 */
import { CheckpointError } from "./pyvalue.ts";

/** Longest pickled integer: step counts and config values need 8 bytes. */
export const MAX_INT_BYTES = 64;
/** Deepest nesting of a config value in a checkpoint (real ones: 3). */
export const MAX_VALUE_DEPTH = 32;
/** Most values (scalars and containers, counted at each visit) converted from one config dict. */
export const MAX_VALUE_NODES = 100_000;
/** The floats a checkpoint decodes into may use this many times its file size (float16 widens to float32). */
export const DECODED_BYTES_PER_FILE_BYTE = 2;
/** Headroom for the floats of a tiny file (a model with a few parameters). */
export const DECODED_BYTES_SLACK = 1 << 20;

/** Counts the values a conversion visits; throws naming the file and the budget when it runs out. */
export class ValueBudget {
  private nodes = 0;
  constructor(private readonly source: string, private readonly where: string) {}

  visit(depth: number): void {
    if (depth > MAX_VALUE_DEPTH) {
      throw new CheckpointError(`${this.source}: ${this.where}: nested deeper than ${MAX_VALUE_DEPTH} levels (or a value that contains itself); expected a plain config dict`);
    }
    if (++this.nodes > MAX_VALUE_NODES) {
      throw new CheckpointError(`${this.source}: ${this.where}: more than ${MAX_VALUE_NODES} values (shared sub-lists expand to more than a config holds); expected a plain config dict`);
    }
  }
}

/** The bytes the floats of a model may take when decoded from a file of fileBytes bytes. */
export function decodedBytesBudget(fileBytes: number): number {
  return DECODED_BYTES_PER_FILE_BYTE * fileBytes + DECODED_BYTES_SLACK;
}
