/**
 * Token generation over the native KV cache (gpt_decode_begin / gpt_decode_step): one
 * prompt pass, then one token per step. Position embeddings are absolute, so a full
 * context (T positions) cannot shift: each token after that is predicted from a new
 * prompt pass over the last T tokens (nanoGPT's sample.py crops its input the same way).
 * Used by `train sample` (src/sample/command.ts), the demo's accuracy and the bench.
 */
import type { NativeModel } from "../backend/native.ts";
import { Rng } from "../util/random.ts";

export interface SamplingOptions {
  temperature: number; // 0: greedy (argmax, ties to the lowest id)
  topK: number; // 0: the whole vocabulary
  seed: number;
}

/** Picks the next token from logits (V); scratch arrays are reused across calls. */
export class TokenPicker {
  private readonly rng: Rng;
  private readonly probs: Float64Array;
  private readonly order: Int32Array;

  constructor(
    readonly options: SamplingOptions,
    V: number,
  ) {
    this.rng = new Rng(options.seed, 0, 0x73616d70 /* "samp" */);
    this.probs = new Float64Array(V);
    this.order = new Int32Array(V);
  }

  pick(logits: Float32Array): number {
    const V = this.probs.length;
    if (this.options.temperature === 0) {
      let best = 0;
      for (let i = 1; i < V; i++) if (logits[i]! > logits[best]!) best = i;
      return best;
    }
    // the k largest logits (all when topK is 0 or >= V), softmax of logits / temperature
    const k = this.options.topK > 0 && this.options.topK < V ? this.options.topK : V;
    let ids: ArrayLike<number>;
    if (k < V) {
      for (let i = 0; i < V; i++) this.order[i] = i;
      this.order.sort((a, b) => logits[b]! - logits[a]! || a - b);
      ids = this.order.subarray(0, k);
    } else {
      for (let i = 0; i < V; i++) this.order[i] = i;
      ids = this.order;
    }
    let max = -Infinity;
    for (let j = 0; j < k; j++) max = Math.max(max, logits[ids[j]!]!);
    let sum = 0;
    for (let j = 0; j < k; j++) sum += this.probs[j] = Math.exp((logits[ids[j]!]! - max) / this.options.temperature);
    let u = this.rng.uniform() * sum;
    for (let j = 0; j < k; j++) {
      u -= this.probs[j]!;
      if (u < 0) return ids[j]!;
    }
    return ids[k - 1]!;
  }
}

/**
 * One sequence being generated: next() gives the next token, feeding the one before
 * into the cache first (so the last token made is never run through the model).
 */
export class Generation {
  private readonly logits: Float32Array;
  private readonly picker: TokenPicker;
  private readonly context: number[];
  private cached: number;
  private last = -1;

  constructor(
    private readonly model: NativeModel,
    prompt: Int32Array,
    sampling: SamplingOptions,
  ) {
    this.logits = new Float32Array(model.cfg.V);
    this.picker = new TokenPicker(sampling, model.cfg.V);
    this.context = Array.from(prompt);
    model.decodeBegin(prompt, this.logits);
    this.cached = prompt.length;
  }

  next(): number {
    if (this.last >= 0) {
      if (this.cached < this.model.cfg.T) {
        this.model.decodeStep(this.last, this.logits);
        this.cached++;
      } else {
        this.model.decodeBegin(Int32Array.from(this.context.slice(-this.model.cfg.T)), this.logits); // the window slides
      }
    }
    this.last = this.picker.pick(this.logits);
    this.context.push(this.last);
    return this.last;
  }
}

/** Up to maxNewTokens after the prompt (1 to T ids), ending after stopId if given. */
export function generate(model: NativeModel, prompt: Int32Array, o: SamplingOptions & { maxNewTokens: number; stopId?: number }): number[] {
  const g = new Generation(model, prompt, o);
  const made: number[] = [];
  while (made.length < o.maxNewTokens) {
    const id = g.next();
    made.push(id);
    if (id === o.stopId) break;
  }
  return made;
}
