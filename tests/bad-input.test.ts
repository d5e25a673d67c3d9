/**
 * Every bad input of docs/errors.md, on the real command (`bun src/cli.ts` in a tiny
 * REPO_ROOT that already holds a finished pipeline's checkpoints): exit 2, one message
 * naming the file, no stack trace, and checkpoints/ byte-identical before and after.
 * The message printed is the one docs/errors.md shows, word for word (<repo> standing
 * for the folder train runs in).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { cpSync, mkdtempSync, readFileSync, rmSync, truncateSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeTinyRepo } from "./helpers/repo.ts";
import { cli, snapshot } from "./reliability-helpers.ts";

const DOC = readFileSync(join(import.meta.dir, "..", "docs", "errors.md"), "utf8");
const PRETRAIN = ["--phase", "pretrain", "--config", "configs/pretrain.json", "--device", "cpu"];
const SFT = ["--phase", "sft", "--config", "configs/sft.json", "--device", "cpu"];
const PIPELINE = ["--phase", "pipeline", "--config", "configs/pipeline.json", "--device", "cpu"];

interface Case {
  /** The row of docs/errors.md. */
  input: string;
  args: string[];
  /** Breaks the copy of the finished repo (paths relative to its root). */
  breakIt(root: string): void;
  /** The file (or flag) the message must name, <repo> for the root. */
  names: string;
  /** Only the first line is the message (a usage error prints the usage after it). */
  firstLineOnly?: boolean;
}

const at = (root: string, ...p: string[]) => join(root, ...p);

function editJson(path: string, edit: (v: Record<string, unknown>) => void): void {
  const v = JSON.parse(readFileSync(path, "utf8"));
  edit(v);
  writeFileSync(path, JSON.stringify(v, null, 2));
}

/** Rewrites the uint16 tokens of a cache in place. */
function editTokens(path: string, edit: (ids: Uint16Array) => void): void {
  const bytes = readFileSync(path);
  edit(new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2));
  writeFileSync(path, bytes);
}

const STREAM = "data/cache/streams";
const SFT_CACHE = "data/cache/sft";
const ASST = 258;

const CASES: Case[] = [
  // token caches
  { input: "truncated .bin", args: PRETRAIN, breakIt: (r) => truncateSync(at(r, STREAM, "wiki_train.bin"), 1000), names: `<repo>/${STREAM}/wiki_train.bin` },
  { input: ".bin size not a multiple of the dtype", args: PRETRAIN, breakIt: (r) => truncateSync(at(r, STREAM, "wiki_train.bin"), 1001), names: `<repo>/${STREAM}/wiki_train.bin` },
  { input: "missing .meta.json", args: PRETRAIN, breakIt: (r) => unlinkSync(at(r, STREAM, "roam_train.bin.meta.json")), names: `<repo>/${STREAM}/roam_train.bin.meta.json` },
  { input: ".meta.json is not JSON", args: PRETRAIN, breakIt: (r) => writeFileSync(at(r, STREAM, "roam_train.bin.meta.json"), '{"dtype": '), names: `<repo>/${STREAM}/roam_train.bin.meta.json` },
  {
    input: ".meta.json with an invalid field",
    args: PRETRAIN,
    breakIt: (r) => editJson(at(r, STREAM, "roam_train.bin.meta.json"), (m) => (m.dtype = "float32")),
    names: `<repo>/${STREAM}/roam_train.bin.meta.json`,
  },
  {
    input: ".meta.json inconsistent with its .bin",
    args: PRETRAIN,
    breakIt: (r) => editJson(at(r, STREAM, "roam_train.bin.meta.json"), (m) => (m.num_tokens = 5)),
    names: `<repo>/${STREAM}/roam_train.bin`,
  },
  {
    input: ".meta.json vocab_size above the model's V",
    args: PRETRAIN,
    breakIt: (r) => editJson(at(r, STREAM, "wiki_val.bin.meta.json"), (m) => (m.vocab_size = 50304)),
    names: `<repo>/${STREAM}/wiki_val.bin.meta.json`,
  },
  { input: "token id >= vocab_size (<= V)", args: PRETRAIN, breakIt: (r) => editTokens(at(r, STREAM, "wiki_val.bin"), (ids) => (ids[5] = 300)), names: `<repo>/${STREAM}/wiki_val.bin` },
  {
    input: "SFT example boundary out of range",
    args: SFT,
    breakIt: (r) => {
      const path = at(r, SFT_CACHE, "dolly_train.bin.idx");
      const offsets = readFileSync(path);
      offsets.writeBigUInt64LE(99999n, 8 * 200);
      writeFileSync(path, offsets);
    },
    names: `<repo>/${SFT_CACHE}/dolly_train.bin.idx`,
  },
  {
    input: "SFT cache with nothing to learn (no <|asst|>)",
    args: SFT,
    breakIt: (r) => editTokens(at(r, SFT_CACHE, "primer_train.bin"), (ids) => ids.forEach((id, i) => id === ASST && (ids[i] = 97))),
    names: `<repo>/${SFT_CACHE}/primer_train.bin`,
  },
  // configs
  {
    input: "config with a JSON syntax error",
    args: PRETRAIN,
    breakIt: (r) => writeFileSync(at(r, "configs/pretrain.json"), '{\n  "model_cfg_path": "configs/model.json",\n  "train_cfg": {"seed": 1,}\n}\n'),
    names: "<repo>/configs/pretrain.json",
  },
  {
    input: "config naming a missing model cfg",
    args: PRETRAIN,
    breakIt: (r) => editJson(at(r, "configs/pretrain.json"), (c) => (c.model_cfg_path = "configs/nope.json")),
    names: "<repo>/configs/nope.json",
  },
  { input: "missing config file", args: ["--phase", "pretrain", "--config", "configs/absent.json"], breakIt: () => {}, names: "<repo>/configs/absent.json" },
  // checkpoints
  {
    // The byte flipped is in the version record: its CRC-32s do not depend on the weights.
    input: "corrupt latest.pt (a flipped byte), auto-resumed",
    args: SFT,
    breakIt: (r) => {
      const path = at(r, "checkpoints/latest.pt");
      const bytes = readFileSync(path);
      const header = bytes.indexOf("latest/version") - 30; // the record's zip local header
      bytes[header + 30 + bytes.readUInt16LE(header + 26) + bytes.readUInt16LE(header + 28)]! ^= 0xff;
      writeFileSync(path, bytes);
    },
    names: "<repo>/checkpoints/latest.pt",
  },
  { input: "truncated latest.pt, auto-resumed", args: SFT, breakIt: (r) => truncateSync(at(r, "checkpoints/latest.pt"), 200_000), names: "<repo>/checkpoints/latest.pt" },
  {
    input: "truncated latest.pt and newest step_*.pt",
    args: SFT,
    breakIt: (r) => {
      truncateSync(at(r, "checkpoints/latest.pt"), 200_000);
      truncateSync(at(r, "checkpoints/step_0000004.pt"), 1000);
    },
    names: "<repo>/checkpoints/latest.pt",
  },
  {
    input: "truncated .pt as --resume",
    args: [...PRETRAIN, "--resume", "checkpoints/pretrain/step_0000002.pt"],
    breakIt: (r) => truncateSync(at(r, "checkpoints/pretrain/step_0000002.pt"), 100_000),
    names: "<repo>/checkpoints/pretrain/step_0000002.pt",
  },
  { input: "empty .pt as --resume", args: [...PRETRAIN, "--resume", "empty.pt"], breakIt: (r) => writeFileSync(at(r, "empty.pt"), ""), names: "<repo>/empty.pt" },
  {
    input: "not a checkpoint as --resume",
    args: [...PRETRAIN, "--resume", "configs/model.json"],
    breakIt: () => {},
    names: "<repo>/configs/model.json",
  },
  {
    input: "latest.pt of another model shape",
    args: SFT,
    breakIt: (r) => editJson(at(r, "configs/model.json"), (m) => (m.C = 48)),
    names: "<repo>/checkpoints/latest.pt",
  },
  {
    input: "--resume of another model shape",
    args: [...PRETRAIN, "--resume", "checkpoints/pretrain/latest.pt"],
    breakIt: (r) => editJson(at(r, "configs/model.json"), (m) => (m.L = 3)),
    names: "<repo>/checkpoints/pretrain/latest.pt",
  },
  { input: "latest.pt of another phase", args: PRETRAIN, breakIt: () => {}, names: "<repo>/checkpoints/latest.pt" },
  { input: "--resume of another phase", args: [...SFT, "--resume", "checkpoints/pretrain/best.pt"], breakIt: () => {}, names: "<repo>/checkpoints/pretrain/best.pt" },
  {
    input: "pipeline whose checkpoints/ mixes a pretrain latest.pt with an SFT run",
    args: PIPELINE,
    breakIt: (r) => {
      cpSync(at(r, "checkpoints/pretrain/latest.pt"), at(r, "checkpoints/latest.pt"));
      rmSync(at(r, "checkpoints/pretrain"), { recursive: true });
    },
    names: "<repo>/checkpoints/latest.pt",
  },
  {
    input: "SFT alone with an unfinished pretrain run in checkpoints/",
    args: SFT,
    breakIt: (r) => {
      const step2 = at(r, "checkpoints/pretrain/step_0000002.pt");
      for (const f of ["step_0000002.pt", "step_0000004.pt", "best.pt", "latest.pt"]) unlinkSync(at(r, "checkpoints", f));
      for (const f of ["step_0000002.pt", "best.pt", "latest.pt"]) cpSync(step2, at(r, "checkpoints", f));
      rmSync(at(r, "checkpoints/pretrain"), { recursive: true });
    },
    names: "<repo>/checkpoints/latest.pt",
  },
  {
    input: "SFT alone with a finished pretrain run in checkpoints/ while checkpoints/pretrain/ holds another",
    args: SFT,
    breakIt: (r) => {
      for (const f of ["step_0000002.pt", "step_0000004.pt"]) unlinkSync(at(r, "checkpoints", f));
      for (const f of ["best.pt", "latest.pt"]) cpSync(at(r, "checkpoints/pretrain", f), at(r, "checkpoints", f));
    },
    names: "<repo>/checkpoints/latest.pt",
  },
  {
    input: "a move record of the pretrain run that is not train's",
    args: SFT,
    breakIt: (r) => writeFileSync(at(r, "checkpoints/pretrain/.moving"), "garbage"),
    names: "<repo>/checkpoints/pretrain/.moving",
  },
  {
    input: "SFT init_from missing",
    args: SFT,
    breakIt: (r) => {
      unlinkSync(at(r, "checkpoints/latest.pt"));
      unlinkSync(at(r, "checkpoints/pretrain/best.pt"));
    },
    names: "<repo>/checkpoints/pretrain/best.pt",
  },
  // flags
  { input: "missing --resume path", args: [...PRETRAIN, "--resume", "checkpoints/nope.pt"], breakIt: () => {}, names: "checkpoints/nope.pt" },
  {
    input: "--resume together with --no-resume",
    args: [...PRETRAIN, "--resume", "checkpoints/latest.pt", "--no-resume"],
    breakIt: () => {},
    names: "--no-resume",
    firstLineOnly: true,
  },
];
if (process.platform !== "darwin") {
  CASES.push({ input: "--device mps off a Mac", args: ["--phase", "pretrain", "--config", "configs/pretrain.json", "--device", "mps"], breakIt: () => {}, names: "--device mps" });
}

let template: string;
const copies: string[] = [];
beforeAll(() => {
  // A finished pipeline: checkpoints/pretrain/{step_2,step_4,latest,best}.pt, then the SFT's in checkpoints/.
  const repo = makeTinyRepo({ sft: true, pretrain: { total_steps: 4, ckpt_every: 2, eval_every: 2 }, sftTrain: { total_steps: 4, ckpt_every: 2, eval_every: 2 } });
  const r = cli(PIPELINE, repo.root);
  if (r.code !== 0) throw new Error(`the pipeline of the template repo failed:\n${r.stderr}`);
  template = repo.root;
}, 60_000);
afterAll(() => {
  for (const c of copies) rmSync(c, { recursive: true, force: true });
});

/** The doc shows a message in a table cell (pipes escaped) or, when it spans lines, in a code block. */
function documented(message: string): boolean {
  return DOC.includes(message.includes("\n") ? message : `\`${message.replaceAll("|", "\\|")}\``);
}

describe("bad input: exit 2, one message naming the file, no stack trace, checkpoints/ unchanged", () => {
  test.each(CASES.map((c) => [c.input, c] as const))("%s", (_, c) => {
    const root = mkdtempSync(join(tmpdir(), "train-bad-input-"));
    copies.push(root);
    cpSync(template, root, { recursive: true });
    c.breakIt(root);
    const before = snapshot(join(root, "checkpoints"));
    expect(Object.keys(before).length).toBeGreaterThan(0);

    const r = cli(c.args, root);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe("");
    expect(r.stderr).not.toContain("    at ");
    expect(r.stderr).not.toContain("Bun v");
    const text = r.stderr.replaceAll(root, "<repo>").trimEnd();
    const message = c.firstLineOnly ? text.split("\n")[0]! : text;
    expect(message).toStartWith("train: ");
    expect(message).toContain(c.names);
    if (!documented(message)) throw new Error(`docs/errors.md does not show this message word for word:\n${message}`);
    expect(snapshot(join(root, "checkpoints"))).toEqual(before);
  }, 30_000);
});
