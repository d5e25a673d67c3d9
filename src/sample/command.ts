/**
 * `train sample --checkpoint PATH [--prompt TEXT | --prompt-file PATH] [--max-new-tokens N]
 *  [--temperature T] [--top-k K] [--seed S] [--device cpu|mps] [--chat] [--tokenizer PATH]`
 *
 * Reads the model of any checkpoint train writes (or torch.save of the same dict), encodes
 * the prompt with the tokenizer of the caches the run was trained on (tokenizer.ts), and
 * streams the continuation to stdout as it is made (src/sample/decoder.ts: the native KV
 * cache). Bad input is an InputError (exit 2) naming the flag or file; Ctrl-C ends the
 * output with a newline and exits 130.
 */
import { defineCommand } from "citty";
import { existsSync, readFileSync, statSync } from "node:fs";
import { deviceAvailable, NativeModel, openLibrary } from "../backend/native.ts";
import { loadCheckpointInto, readCheckpointHead } from "../checkpoint/checkpoint.ts";
import { InputError, Interrupted } from "../errors.ts";
import { Generation } from "./decoder.ts";
import { findTokenizer, type Tokenizer } from "./tokenizer.ts";

export class SampleError extends InputError {
  override name = "SampleError";
}

const args = {
  checkpoint: { type: "string" as const, description: "a checkpoint (.pt) written by train or by torch.save", valueHint: "path" },
  prompt: { type: "string" as const, description: "the prompt: text, or token ids (\"1 2 3\") when no tokenizer is known", valueHint: "text" },
  "prompt-file": { type: "string" as const, description: "read the prompt from this file", valueHint: "path" },
  "max-new-tokens": { type: "string" as const, description: "tokens to generate", default: "200" },
  temperature: { type: "string" as const, description: "0: greedy (deterministic); else softmax(logits / T)", default: "0.8" },
  "top-k": { type: "string" as const, description: "sample among the k most likely tokens (0: all)", default: "0" },
  seed: { type: "string" as const, description: "seed of the sampling", default: "1337" },
  device: { type: "string" as const, description: "cpu | mps", default: "cpu" },
  chat: { type: "boolean" as const, description: "wrap the prompt as a user turn + <|asst|> (the SFT format) and stop at <|eot|>" },
  tokenizer: {
    type: "string" as const,
    description: "a cache's .meta.json naming the tokenizer (default: data/cache/**/*.meta.json of the run folder)",
    valueHint: "path",
  },
} as const;

export interface SampleRequest {
  checkpoint: string;
  prompt: string | null;
  maxNewTokens: number;
  temperature: number;
  topK: number;
  seed: number;
  device: "cpu" | "mps";
  chat: boolean;
  tokenizerPath: string | null;
}

function intFlag(name: string, raw: string, min: number): number {
  const v = Number(raw);
  if (raw.trim() === "" || !Number.isSafeInteger(v) || v < min) throw new SampleError(`--${name} ${raw}: expected an integer >= ${min}`);
  return v;
}

/** The request of the command line's flags (citty's strings), checked. */
export function sampleRequest(a: Record<string, unknown>): SampleRequest {
  const str = (k: string) => (typeof a[k] === "string" ? (a[k] as string) : undefined);
  const checkpoint = str("checkpoint");
  if (checkpoint === undefined || checkpoint === "") throw new SampleError("--checkpoint PATH is required (a .pt file written by train)");
  if (!existsSync(checkpoint)) throw new SampleError(`--checkpoint ${checkpoint}: no such file`);
  if (statSync(checkpoint).isDirectory()) throw new SampleError(`--checkpoint ${checkpoint}: is a folder, expected a .pt file`);
  const promptText = str("prompt");
  const promptFile = str("prompt-file");
  if (promptText !== undefined && promptFile !== undefined) throw new SampleError("--prompt and --prompt-file contradict each other: give one of them");
  let prompt: string | null = promptText ?? null;
  if (promptFile !== undefined) {
    if (!existsSync(promptFile) || statSync(promptFile).isDirectory()) throw new SampleError(`--prompt-file ${promptFile}: no such file`);
    prompt = readFileSync(promptFile, "utf8");
  }
  const temperature = Number(str("temperature") ?? "0.8");
  if (!Number.isFinite(temperature) || temperature < 0) {
    throw new SampleError(`--temperature ${str("temperature")}: expected a number >= 0 (0 is greedy)`);
  }
  const device = str("device") ?? "cpu";
  if (device !== "cpu" && device !== "mps") throw new SampleError(`--device ${device}: expected cpu or mps`);
  const seed = Number(str("seed") ?? "1337");
  if (!Number.isSafeInteger(seed)) throw new SampleError(`--seed ${str("seed")}: expected an integer`);
  return {
    checkpoint,
    prompt,
    maxNewTokens: intFlag("max-new-tokens", str("max-new-tokens") ?? "200", 1),
    temperature,
    topK: intFlag("top-k", str("top-k") ?? "0", 0),
    seed,
    device,
    chat: a.chat === true,
    tokenizerPath: str("tokenizer") ?? null,
  };
}

/** The prompt's ids: text through the tokenizer, or ids when there is none. */
function promptIds(r: SampleRequest, tok: Tokenizer | null, V: number): Int32Array {
  const where = r.prompt !== null && typeof r.prompt === "string" ? "--prompt" : "the prompt";
  let ids: number[];
  if (tok === null) {
    if (r.chat) throw new SampleError(`--chat needs the tokenizer's special ids, and no tokenizer is known for ${r.checkpoint} (give --tokenizer PATH)`);
    if (r.prompt === null || r.prompt.trim() === "") {
      throw new SampleError(`no tokenizer is known for ${r.checkpoint}: give --prompt as token ids ("1 2 3") or --tokenizer PATH`);
    }
    const words = r.prompt.trim().split(/[\s,]+/);
    ids = words.map((w) => {
      const v = Number(w);
      if (!/^\d+$/.test(w) || !Number.isSafeInteger(v)) {
        throw new SampleError(`${where}: "${w}" is not a token id; no tokenizer is known for ${r.checkpoint}, so the prompt must be ids (or give --tokenizer PATH)`);
      }
      return v;
    });
  } else if (r.chat) {
    ids = [tok.specials.user, ...tok.encode(r.prompt ?? ""), tok.specials.asst];
  } else {
    ids = r.prompt === null || r.prompt === "" ? [tok.specials.endoftext] : Array.from(tok.encode(r.prompt));
  }
  const bad = ids.findIndex((id) => id < 0 || id >= V);
  if (bad >= 0) throw new SampleError(`${where}: token id ${ids[bad]} (position ${bad}) is unknown to the model: expected ids in [0, V=${V})`);
  return Int32Array.from(ids);
}

export interface SampleEnv {
  libraryPath?: string; // the compiled executable's embedded library (default: the checkout's build)
  out?: { write(s: string): unknown };
  err?: { write(s: string): unknown };
}

export async function runSample(r: SampleRequest, env: SampleEnv = {}): Promise<number> {
  const out = env.out ?? process.stdout;
  const err = env.err ?? process.stderr;
  // The head first (data.pkl): the weights stream into the model once it is open, and the
  // moments are never read (a GPT-2-small checkpoint is 1.5 GB, its weights a third).
  const cfg = readCheckpointHead(r.checkpoint).modelCfg;
  const tok = findTokenizer(r.checkpoint, r.tokenizerPath, cfg.V);
  if (tok === null) err.write(`note: no tokenizer is known for ${r.checkpoint} (no data/cache/**/*.meta.json in its run folder; --tokenizer PATH names one): reading and printing token ids\n`);
  const prompt = promptIds(r, tok, cfg.V);
  if (prompt.length > cfg.T) {
    throw new SampleError(`the prompt is ${prompt.length} tokens${r.chat ? " with the chat wrapper" : ""}, longer than the model's context T=${cfg.T}: shorten --prompt${r.chat ? "" : " (or --prompt-file)"}`);
  }
  const lib = openLibrary(env.libraryPath);
  if (r.device === "mps" && !deviceAvailable("mps", lib)) {
    throw new SampleError("--device mps: no Metal device in this build or on this machine; use --device cpu");
  }
  const model = NativeModel.open(cfg, 1, r.device, lib);
  let stopped = false;
  const onSigint = () => (stopped = true);
  process.on("SIGINT", onSigint);
  try {
    loadCheckpointInto(model, r.checkpoint, { optimizer: false });
    const g = new Generation(model, prompt, r);
    const text = tok?.streamDecoder();
    const stopId = r.chat ? tok!.specials.eot : undefined;
    let made = 0;
    while (made < r.maxNewTokens && !stopped) {
      const id = g.next();
      made++;
      if (id === stopId) break;
      out.write(text ? text.push(id) : `${made > 1 ? " " : ""}${id}`);
      if (made % 8 === 0) await new Promise((resolve) => setImmediate(resolve)); // lets Ctrl-C in
    }
    out.write(`${text ? text.flush() : ""}\n`);
    if (stopped) throw new Interrupted("SIGINT", `stopped by SIGINT after ${made} tokens`);
    return 0;
  } finally {
    process.off("SIGINT", onSigint);
    model.close();
  }
}

export const sampleCommand = defineCommand({
  meta: { name: "sample", description: "generate text from a checkpoint (KV-cached decoding)" },
  args,
  async run({ args: a, data }) {
    await runSample(sampleRequest(a as Record<string, unknown>), { libraryPath: (data as { embeddedLibrary?: string } | undefined)?.embeddedLibrary });
  },
});
