/**
 * A throwaway REPO_ROOT for runner tests: tiny caches written with the project's own
 * cache writer, a tiny model cfg and phase configs. Nothing here touches the real repo.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CacheWriter } from "../../src/prepare/writer.ts";
import { ASST_ID, EOT_ID, USER_ID, encodeText } from "../../src/data/tokenizer.ts";

export const TINY_MODEL = { V: 264, T: 16, C: 32, L: 2, H: 2, d_ff: 64 };

export const TINY_TRAIN = {
  seed: 7,
  B: 4,
  total_steps: 10,
  eval_every: 5,
  eval_batches: 2,
  ckpt_every: 5,
  log_every: 5,
  base_lr: 3e-3,
  warmup_steps: 2,
  min_lr: 3e-4,
  grad_clip: 1.0,
  accum_steps: 1,
  weight_decay: 0.1,
  beta1: 0.9,
  beta2: 0.95,
  eps: 1e-8,
};

/** A repetitive English-ish corpus: a model that learns gets far below ln(V). */
export function repetitiveText(n: number): string {
  const lines = ["the cat sat on the mat. ", "a dog ran in the park. ", "we like to read books. "];
  let s = "";
  for (let i = 0; s.length < n; i++) s += lines[i % lines.length];
  return s;
}

function writeStream(root: string, source: string, split: string, text: string): void {
  const w = new CacheWriter(join(root, "data/cache/streams", `${source}_${split}.bin`), { kind: "streams", source, split });
  w.append(encodeText(text));
  w.close();
}

function writeSft(root: string, source: string, split: string, examples: Array<[string, string]>): void {
  const w = new CacheWriter(join(root, "data/cache/sft", `${source}_${split}.bin`), { kind: "sft", source, split });
  for (const [q, a] of examples) {
    w.append([USER_ID]);
    w.append(encodeText(q));
    w.append([ASST_ID]);
    w.append(encodeText(a));
    w.append([EOT_ID]);
    w.endExample();
  }
  w.close();
}

export interface TinyRepo {
  root: string;
  writeConfig(name: string, value: unknown): string;
}

export interface TinyRepoOptions {
  streams?: boolean;
  sft?: boolean;
  model?: Partial<typeof TINY_MODEL>;
  pretrain?: Partial<typeof TINY_TRAIN>;
  sftTrain?: Partial<typeof TINY_TRAIN>;
  sftVal?: "wiki" | "sft";
  /** Also SFT examples of every length around T (long prompts, long answers). */
  sftLong?: boolean;
  /** long_examples of the sft config (absent: the default). */
  longExamples?: "head" | "cut_prompt" | "drop";
}

/** Examples from a few tokens to several times T=16: prompts and answers of 1..60 bytes. */
function longExamples(n: number, salt: number): Array<[string, string]> {
  const words = "the quick brown fox jumps over the lazy dog and keeps running far away".split(" ");
  const text = (len: number, k: number) => Array.from({ length: len }, (_, j) => words[(k + j) % words.length]![j % 3]).join("");
  return Array.from({ length: n }, (_, i) => [`q${text(1 + ((i * 7 + salt) % 60), i)}`, text(1 + ((i * 13 + salt) % 40), i + 3)]);
}

/** All tiny repos of this test process live under one folder, removed when it exits. */
let parent: string | null = null;
function reposFolder(): string {
  if (parent === null) {
    const dir = mkdtempSync(join(tmpdir(), "train-tests-"));
    process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
    parent = dir;
  }
  return parent;
}

export function makeTinyRepo(o: TinyRepoOptions = {}): TinyRepo {
  const root = mkdtempSync(join(reposFolder(), "repo-"));
  mkdirSync(join(root, "configs"), { recursive: true });
  const writeConfig = (name: string, value: unknown): string => {
    const path = join("configs", name);
    writeFileSync(join(root, path), JSON.stringify(value, null, 2));
    return path;
  };
  if (o.streams !== false) {
    for (const source of ["wiki", "roam", "primer"]) {
      writeStream(root, source, "train", repetitiveText(20000));
      writeStream(root, source, "val", repetitiveText(3000));
    }
  }
  if (o.sft) {
    const examples = (n: number, salt: number): Array<[string, string]> =>
      Array.from({ length: n }, (_, i) => [`add ${i % 7} and ${(i + salt) % 5}`, `${(i % 7) + ((i + salt) % 5)}`]);
    for (const source of ["dolly", "oasst1", "primer"]) {
      writeSft(root, source, "train", [...examples(200, 1), ...(o.sftLong ? longExamples(200, 1) : [])]);
      writeSft(root, source, "val", [...examples(40, 3), ...(o.sftLong ? longExamples(40, 3) : [])]);
    }
  }
  writeConfig("model.json", { ...TINY_MODEL, ...o.model });
  writeConfig("pretrain.json", {
    model_cfg_path: "configs/model.json",
    train_cfg: { ...TINY_TRAIN, ...o.pretrain },
    sources: { wiki: 0.784, roam: 0.196, primer: 0.02 },
    val_source: "wiki",
  });
  writeConfig("sft.json", {
    model_cfg_path: "configs/model.json",
    init_from: "checkpoints/pretrain/best.pt",
    train_cfg: { ...TINY_TRAIN, ...o.sftTrain },
    sft_sources: { dolly: 0.5, oasst1: 0.4, primer: 0.1 },
    val_source: o.sftVal ?? "sft",
    ...(o.longExamples ? { long_examples: o.longExamples } : {}),
  });
  writeConfig("pipeline.json", { pretrain_config_path: "configs/pretrain.json", sft_config_path: "configs/sft.json" });
  return { root, writeConfig };
}

/** An output stream that keeps what was written. */
export function captureStream(): { write(s: string): boolean; text(): string; isTTY: false } {
  const parts: string[] = [];
  return { write: (s: string) => (parts.push(s), true), text: () => parts.join(""), isTTY: false };
}
