/**
 * Config files (src/config.ts): every problem reported with its JSON path, all at once and
 * across files; the spec's defaults; JSON syntax errors at the right line and column; and
 * the configs stored verbatim in checkpoints (train_cfg, model_cfg).
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadCheckpoint } from "../src/checkpoint/checkpoint.ts";
import { loadPhaseConfig, loadPipelineConfig, PHASE_DEFAULTS, TRAIN_DEFAULTS, type PhaseConfig, type PretrainConfig } from "../src/config.ts";
import { exitCodeOf } from "../src/errors.ts";
import { runTraining } from "../src/train/run.ts";
import { captureStream, makeTinyRepo, TINY_MODEL, TINY_TRAIN, type TinyRepo } from "./helpers/repo.ts";


const REPO = join(import.meta.dir, "..");

/** The ConfigError a load throws: exit code 2, its message split in lines. */
function configError(load: () => unknown): { message: string; lines: string[] } {
  let error: unknown = null;
  try {
    load();
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(Error);
  expect((error as Error).name).toBe("ConfigError");
  expect(exitCodeOf(error)).toBe(2);
  const message = (error as Error).message;
  return { message, lines: message.split("\n") };
}

function pretrainWith(repo: TinyRepo, value: unknown): () => PhaseConfig {
  repo.writeConfig("p.json", value);
  return () => loadPhaseConfig("configs/p.json", "pretrain", repo.root);
}

function sftWith(repo: TinyRepo, value: unknown): () => PhaseConfig {
  repo.writeConfig("s.json", value);
  return () => loadPhaseConfig("configs/s.json", "sft", repo.root);
}

const goodPretrain = { model_cfg_path: "configs/model.json", train_cfg: {}, sources: { wiki: 1 } };
const goodSft = { model_cfg_path: "configs/model.json", train_cfg: {}, sft_sources: { dolly: 1 } };

/** Asserts a problem line for a JSON path exists and contains every fragment. */
function expectProblem(lines: string[], path: string, ...fragments: string[]): void {
  const line = lines.find((l) => l.trimStart().startsWith(`${path}: `));
  expect(line, `no problem reported at ${path} in:\n${lines.join("\n")}`).toBeDefined();
  for (const f of fragments) expect(line!).toContain(f);
}

describe("defaults and the shipped configs", () => {
  test("an empty train_cfg gets the spec's TrainConfig defaults; val_source defaults to wiki", () => {
    const repo = makeTinyRepo({ streams: false });
    const c = pretrainWith(repo, goodPretrain)();
    expect(c.train).toMatchObject({
      seed: 42,
      eval_every: 200,
      eval_batches: 50,
      ckpt_every: 1000,
      B: 32,
      total_steps: 20000,
      base_lr: 3e-4,
      warmup_steps: 200,
      min_lr: 3e-5,
      grad_clip: 1.0,
      accum_steps: 1,
      log_every: 50,
    });
    expect(c.train as unknown).toEqual(TRAIN_DEFAULTS);
    expect(c.valSource).toBe("wiki");
    const s = sftWith(repo, goodSft)();
    expect(s.valSource).toBe("wiki");
    expect(s.phase === "sft" && s.initFrom).toBe(join(repo.root, "checkpoints/pretrain/best.pt"));
    expect(s.phase === "sft" && s.initFromDefault).toBe(true);
  });

  test('sources omitted: the spec\'s mixture; init_from "none": fresh weights; init_from null is refused, naming both spellings', () => {
    const repo = makeTinyRepo({ streams: false });
    const { sources: _, ...noSources } = goodPretrain;
    const c = pretrainWith(repo, noSources)();
    expect<Readonly<Record<string, number>>>(c.sources).toEqual({ wiki: 0.784, roam: 0.196, primer: 0.02 });
    expect(c.defaulted.sources).toEqual({ wiki: 0.784, roam: 0.196, primer: 0.02 });
    expect(c.defaulted.val_source).toBe("wiki");
    expect(c.raw).toEqual(noSources); // stored verbatim: the defaults are not written into train_cfg
    const none = sftWith(repo, { ...goodSft, init_from: "none" })();
    expect(none.phase === "sft" && none.initFrom).toBe(null);
    expect(none.phase === "sft" && none.initFromDefault).toBe(false);
    expectProblem(configError(sftWith(repo, { ...goodSft, init_from: null })).lines, "/init_from", '"none"', "checkpoints/pretrain/best.pt", "got null");
  });

  test("README's table of defaults is src/config.ts's, key for key", () => {
    const readme = readFileSync(join(REPO, "README.md"), "utf8");
    const table = readme.slice(readme.indexOf("| key | default |"));
    const rows = table.slice(0, table.indexOf("\n\n")).split("\n").slice(2);
    const documented: Record<string, unknown> = {};
    for (const row of rows) {
      const cells = row.split("|").map((c) => c.trim());
      for (const [key, value] of [[cells[1], cells[2]], [cells[4], cells[5]]]) {
        documented[key!.replace(/`/g, "").replace(/ \(.*\)$/, "")] = JSON.parse(value!.replace(/`/g, ""));
      }
    }
    expect(documented).toEqual({ ...TRAIN_DEFAULTS, ...PHASE_DEFAULTS });
  });

  test("configs/pretrain.json, sft.json, pipeline.json and configs/demo load; pretrain mixes the spec's default probabilities", () => {
    const p = loadPhaseConfig("configs/pretrain.json", "pretrain", REPO) as PretrainConfig;
    expect(JSON.parse(readFileSync(join(REPO, "configs/pretrain.json"), "utf8")).sources).toEqual({ wiki: 0.784, roam: 0.196, primer: 0.02 });
    expect(p.valSource).toBe("wiki");
    expect(p.sources.wiki! + p.sources.roam! + p.sources.primer!).toBeCloseTo(1, 12);
    const s = loadPhaseConfig("configs/sft.json", "sft", REPO);
    expect(s.valSource).toBe("wiki");
    expect(Object.keys(s.sources).sort()).toEqual(["dolly", "oasst1", "primer"]);
    const pipe = loadPipelineConfig("configs/pipeline.json", REPO);
    expect(pipe.pretrain.model).toEqual(pipe.sft.model);
    if (existsSync(join(REPO, "configs/demo/pipeline.json"))) loadPipelineConfig("configs/demo/pipeline.json", REPO);
  });

  test("probabilities are normalized and zero entries dropped; relative paths resolve against REPO_ROOT", () => {
    const repo = makeTinyRepo({ streams: false });
    const c = pretrainWith(repo, { ...goodPretrain, sources: { wiki: 3, roam: 1, primer: 0 } })();
    expect<Readonly<Record<string, number>>>(c.sources).toEqual({ wiki: 0.75, roam: 0.25 });
    expect(c.file).toBe(join(repo.root, "configs/p.json"));
    expect(c.modelCfgFile).toBe(join(repo.root, "configs/model.json"));
    const s = sftWith(repo, { ...goodSft, init_from: "ckpts/pre.pt" })();
    expect(s.phase === "sft" && s.initFrom).toBe(join(repo.root, "ckpts/pre.pt"));
  });
});

describe("config errors: JSON path, all at once", () => {
  const repo = makeTinyRepo({ streams: false });

  test("unknown keys at every level, each with its path and the keys expected there", () => {
    const { lines, message } = configError(
      pretrainWith(repo, {
        ...goodPretrain,
        extra: true,
        train_cfg: { lr: 1e-3, B: 4 },
        sources: { wiki: 1, books: 0.5 },
      }),
    );
    expect(lines[0]).toBe(`pretrain config ${join(repo.root, "configs/p.json")} is invalid:`);
    expectProblem(lines, "/extra", 'unknown key "extra"', "model_cfg_path, train_cfg, sources, val_source");
    expectProblem(lines, "/train_cfg/lr", 'unknown key "lr"', "base_lr");
    expectProblem(lines, "/sources/books", 'unknown key "books"', "wiki, roam, primer");
    expect(lines.length).toBe(4);
    expect(message).not.toContain("    at "); // no stack in the message
  });

  test("wrong types and out-of-range values, every one reported", () => {
    const { lines } = configError(
      pretrainWith(repo, {
        model_cfg_path: 7,
        train_cfg: { B: "4", total_steps: 0, base_lr: "fast", warmup_steps: 1.5, beta2: 1, seed: -1, accum_steps: 4 },
        sources: { wiki: "1" },
        val_source: 3,
      }),
    );
    expectProblem(lines, "/model_cfg_path", "string", "7");
    expectProblem(lines, "/train_cfg/B", "integer", '"4"');
    expectProblem(lines, "/train_cfg/total_steps", "1", "0");
    expectProblem(lines, "/train_cfg/base_lr", "number", '"fast"');
    expectProblem(lines, "/train_cfg/warmup_steps", "integer", "1.5");
    expectProblem(lines, "/train_cfg/beta2", "1");
    expectProblem(lines, "/train_cfg/seed", "-1");
    expectProblem(lines, "/train_cfg/accum_steps", "not supported", "4");
    expectProblem(lines, "/sources/wiki", "number", '"1"');
    expectProblem(lines, "/val_source", '"wiki", "roam", "primer"', "3");
    expect(lines.length).toBe(11);
  });

  test("missing required keys are named", () => {
    const { lines } = configError(pretrainWith(repo, { train_cfg: {} }));
    expectProblem(lines, "/model_cfg_path", 'missing required key "model_cfg_path"');
    expect(lines.some((l) => l.includes("/sources"))).toBe(false); // sources has a default
    expect(lines.length).toBe(2);
    const sft = configError(sftWith(repo, { model_cfg_path: "configs/model.json", train_cfg: {} })).lines;
    expectProblem(sft, "/sft_sources", 'missing required key "sft_sources"'); // the spec gives no default
  });

  test("negative, all-zero and empty probabilities", () => {
    expectProblem(configError(pretrainWith(repo, { ...goodPretrain, sources: { wiki: -0.5, roam: 1 } })).lines, "/sources/wiki", "0", "-0.5");
    expectProblem(configError(pretrainWith(repo, { ...goodPretrain, sources: { wiki: 0, roam: 0, primer: 0 } })).lines, "/sources", "at least one probability > 0");
    expectProblem(configError(pretrainWith(repo, { ...goodPretrain, sources: {} })).lines, "/sources", "at least one probability > 0");
    expectProblem(configError(sftWith(repo, { ...goodSft, sft_sources: { dolly: 0 } })).lines, "/sft_sources", "at least one probability > 0");
    // reported together with an unrelated problem elsewhere
    const both = configError(pretrainWith(repo, { ...goodPretrain, train_cfg: { B: 0 }, sources: { wiki: 0 } })).lines;
    expectProblem(both, "/train_cfg/B");
    expectProblem(both, "/sources", "at least one probability > 0");
  });

  test("unknown sources: a stream source in sft_sources, an SFT source in sources", () => {
    expectProblem(configError(sftWith(repo, { ...goodSft, sft_sources: { dolly: 1, wiki: 1 } })).lines, "/sft_sources/wiki", 'unknown key "wiki"', "dolly, oasst1, primer");
    expectProblem(configError(pretrainWith(repo, { ...goodPretrain, sources: { dolly: 1 } })).lines, "/sources/dolly", 'unknown key "dolly"', "wiki, roam, primer");
    expectProblem(configError(sftWith(repo, { ...goodSft, val_source: "dolly" })).lines, "/val_source", '"wiki", "roam", "primer", "sft"', '"dolly"');
  });

  test('val_source "sft" in a pretrain config says why it is refused', () => {
    const { lines } = configError(pretrainWith(repo, { ...goodPretrain, val_source: "sft" }));
    expectProblem(lines, "/val_source", '"sft"', "only allowed in an sft config", '"wiki"');
    expect(lines.length).toBe(2);
    // and is fine in an sft config
    expect(sftWith(repo, { ...goodSft, val_source: "sft" })().valSource).toBe("sft");
  });

  test("min_lr above base_lr; a non-finite number (1e999) is shown as Infinity, not null", () => {
    expectProblem(configError(pretrainWith(repo, { ...goodPretrain, train_cfg: { base_lr: 1e-4, min_lr: 1e-3 } })).lines, "/train_cfg/min_lr", "0.001", "base_lr 0.0001");
    writeFileSync(join(repo.root, "configs/p.json"), '{"model_cfg_path": "configs/model.json", "train_cfg": {"base_lr": 1e999}, "sources": {"wiki": 1}}');
    expectProblem(configError(() => loadPhaseConfig("configs/p.json", "pretrain", repo.root)).lines, "/train_cfg/base_lr", "finite", "Infinity");
  });

  test("learning rates, clipping, decay and eps beyond float32 (the native step's precision) are refused", () => {
    const { lines } = configError(
      pretrainWith(repo, { ...goodPretrain, train_cfg: { base_lr: 1e39, min_lr: -1e-4, grad_clip: 5e38, weight_decay: 1e40, eps: 1e-50 } }),
    );
    expectProblem(lines, "/train_cfg/base_lr", "3.4e38", "1e+39");
    expectProblem(lines, "/train_cfg/min_lr", "from 0", "-0.0001");
    expectProblem(lines, "/train_cfg/grad_clip", "float32", "5e+38");
    expectProblem(lines, "/train_cfg/weight_decay", "float32", "1e+40");
    expectProblem(lines, "/train_cfg/eps", "above 0 in float32", "1e-50");
    expect(lines.length).toBe(6); // the heading and the five
  });

  test("a key given twice (JSON.parse would keep the last silently)", () => {
    writeFileSync(join(repo.root, "configs/p.json"), '{\n  "model_cfg_path": "configs/model.json",\n  "train_cfg": { "B": 4, "B": 8 },\n  "sources": { "wiki": 1 }\n}\n');
    expectProblem(configError(() => loadPhaseConfig("configs/p.json", "pretrain", repo.root)).lines, "/train_cfg/B", "given twice", "line 3, column 26");
  });

  test("a config of the other phase is named as such", () => {
    const full = makeTinyRepo({ streams: false });
    expectProblem(configError(() => loadPhaseConfig("configs/pretrain.json", "sft", full.root)).lines, "/", "this is a pretrain config", "expected an sft config");
    expectProblem(configError(() => loadPhaseConfig("configs/sft.json", "pretrain", full.root)).lines, "/", "this is an sft config", "expected a pretrain config");
  });
});

describe("model cfg errors", () => {
  const repo = makeTinyRepo({ streams: false });

  test("C % H != 0: reported at /C in the model cfg, naming the config that points to it", () => {
    repo.writeConfig("m.json", { ...TINY_MODEL, C: 30, H: 4 });
    const { lines } = configError(pretrainWith(repo, { ...goodPretrain, model_cfg_path: "configs/m.json" }));
    expect(lines[0]).toBe(`model cfg ${join(repo.root, "configs/m.json")} (model_cfg_path of ${join(repo.root, "configs/p.json")}) is invalid:`);
    expectProblem(lines, "/C", "30", "not divisible by H=4");
  });

  test("bad shape values and keys of the model cfg, all at once", () => {
    repo.writeConfig("m.json", { V: 264, T: 0, C: "32", L: 2, H: 2, dff: 64 });
    const { lines } = configError(pretrainWith(repo, { ...goodPretrain, model_cfg_path: "configs/m.json" }));
    expectProblem(lines, "/T", "0");
    expectProblem(lines, "/C", '"32"');
    expectProblem(lines, "/dff", 'unknown key "dff"', "d_ff");
    expectProblem(lines, "/d_ff", "missing required key");
  });

  test("a missing model cfg file is reported at /model_cfg_path, with the config's other problems", () => {
    const { lines } = configError(pretrainWith(repo, { ...goodPretrain, model_cfg_path: "configs/nope.json", train_cfg: { B: -1 } }));
    expectProblem(lines, "/model_cfg_path", join(repo.root, "configs/nope.json"), "not found");
    expectProblem(lines, "/train_cfg/B", "-1");
  });
});

describe("JSON syntax errors: file, line and column", () => {
  const repo = makeTinyRepo({ streams: false });
  const file = join(repo.root, "configs/p.json");
  const load = () => loadPhaseConfig("configs/p.json", "pretrain", repo.root);

  test("trailing comma", () => {
    // line 4 is `  "sources": { "wiki": 1, }`: the `}` after the comma is column 27
    writeFileSync(file, '{\n  "model_cfg_path": "configs/model.json",\n  "train_cfg": {},\n  "sources": { "wiki": 1, }\n}\n');
    expect(configError(load).message).toBe(`pretrain config ${file}: invalid JSON at line 4, column 27: expected a key in double quotes (a trailing comma?)`);
  });

  test("missing comma, in a CRLF file", () => {
    writeFileSync(file, '{\r\n  "model_cfg_path": "configs/model.json"\r\n  "train_cfg": {}\r\n}\r\n');
    expect(configError(load).message).toBe(`pretrain config ${file}: invalid JSON at line 3, column 3: expected ',' between two entries`);
  });

  test("a comment, an unterminated string, an empty file", () => {
    writeFileSync(file, '{\n    // the model\n  "model_cfg_path": 1\n}');
    expect(configError(load).message).toContain("invalid JSON at line 2, column 5: comments are not allowed in JSON");
    writeFileSync(file, '{\n  "model_cfg_path": "configs/mo');
    expect(configError(load).message).toContain("invalid JSON at line 2, column 21");
    writeFileSync(file, "");
    expect(configError(load).message).toBe(`pretrain config ${file}: invalid JSON at line 1, column 1: expected a value`);
  });

  test("a byte order mark is accepted", () => {
    writeFileSync(file, `\uFEFF${JSON.stringify(goodPretrain)}`);
    expect<Readonly<Record<string, number>>>(load().sources).toEqual({ wiki: 1 });
  });

  test("a missing config file", () => {
    expect(configError(() => loadPhaseConfig("configs/none.json", "pretrain", repo.root)).message).toBe(
      `pretrain config ${join(repo.root, "configs/none.json")}: file not found`,
    );
  });
});

describe("pipeline config", () => {
  test("configs naming models of different shapes: the differing keys with both values", () => {
    const repo = makeTinyRepo({ streams: false });
    repo.writeConfig("big.json", { ...TINY_MODEL, C: 64, L: 3 });
    repo.writeConfig("s.json", { ...goodSft, model_cfg_path: "configs/big.json" });
    repo.writeConfig("pp.json", { pretrain_config_path: "configs/pretrain.json", sft_config_path: "configs/s.json" });
    const { lines } = configError(() => loadPipelineConfig("configs/pp.json", repo.root));
    expect(lines[0]).toBe(`pipeline config ${join(repo.root, "configs/pp.json")} is invalid:`);
    expect(lines[1]).toContain("different models");
    expect(lines[1]).toContain("C: 32 vs 64");
    expect(lines[1]).toContain("L: 2 vs 3");
    expect(lines[1]).not.toContain("V:");
  });

  test("every problem of the pipeline, both phase configs and their model cfgs at once", () => {
    const repo = makeTinyRepo({ streams: false });
    repo.writeConfig("m.json", { ...TINY_MODEL, C: 30, H: 4 });
    repo.writeConfig("p.json", { ...goodPretrain, model_cfg_path: "configs/m.json", train_cfg: { B: 0 } });
    repo.writeConfig("s.json", { ...goodSft, model_cfg_path: "configs/nope.json", sft_sources: { dolly: 0 } });
    repo.writeConfig("pp.json", { pretrain_config_path: "configs/p.json", sft_config_path: "configs/s.json", extra: 1 });
    const { lines, message } = configError(() => loadPipelineConfig("configs/pp.json", repo.root));
    expectProblem(lines, "/extra", 'unknown key "extra"');
    expect(message).toContain(`pretrain config ${join(repo.root, "configs/p.json")} (pretrain_config_path of ${join(repo.root, "configs/pp.json")}) is invalid:`);
    expectProblem(lines, "/train_cfg/B", "0");
    expect(message).toContain(`model cfg ${join(repo.root, "configs/m.json")}`);
    expectProblem(lines, "/C", "not divisible by H=4");
    expect(message).toContain(`sft config ${join(repo.root, "configs/s.json")} (sft_config_path of`);
    expectProblem(lines, "/sft_sources", "at least one probability > 0");
    expectProblem(lines, "/model_cfg_path", join(repo.root, "configs/nope.json"), "not found");
  });

  test("a missing phase config file is reported at the key naming it; swapped configs are named", () => {
    const repo = makeTinyRepo({ streams: false });
    repo.writeConfig("pp.json", { pretrain_config_path: "configs/none.json", sft_config_path: "configs/sft.json" });
    expectProblem(configError(() => loadPipelineConfig("configs/pp.json", repo.root)).lines, "/pretrain_config_path", join(repo.root, "configs/none.json"), "not found");
    repo.writeConfig("pp.json", { pretrain_config_path: "configs/sft.json", sft_config_path: "configs/pretrain.json" });
    const swapped = configError(() => loadPipelineConfig("configs/pp.json", repo.root)).message;
    expect(swapped).toContain("this is an sft config");
    expect(swapped).toContain("this is a pretrain config");
    repo.writeConfig("pp.json", { pretrain_config_path: "configs/pretrain.json" });
    expectProblem(configError(() => loadPipelineConfig("configs/pp.json", repo.root)).lines, "/sft_config_path", "missing required key");
  });
});

describe("configs stored verbatim in checkpoints", () => {
  test("train_cfg is the config file's JSON (not the defaults-filled config), model_cfg the model cfg file's", async () => {
    const repo = makeTinyRepo();
    // keys in an unusual order, defaults left out, a float written as 1.0
    const text = `{
  "val_source": "roam",
  "sources": { "primer": 1, "wiki": 0 },
  "train_cfg": { "total_steps": 2, "B": 2, "eval_every": 2, "eval_batches": 1, "ckpt_every": 2, "grad_clip": 1.0, "seed": 3 },
  "model_cfg_path": "configs/model.json"
}`;
    writeFileSync(join(repo.root, "configs/odd.json"), text);
    const out = captureStream();
    const code = await runTraining(
      { phase: "pretrain", configPath: "configs/odd.json", device: "cpu", resume: { kind: "none" } },
      { repoRoot: repo.root, out, stop: { requested: null } },
    );
    expect(code).toBe(0);
    for (const name of ["latest.pt", "best.pt", "step_0000002.pt"]) {
      const ckpt = loadCheckpoint(join(repo.root, "checkpoints", name));
      const fileJson = JSON.parse(text);
      expect(ckpt.trainCfg).toEqual(fileJson);
      expect(Object.keys(ckpt.trainCfg)).toEqual(Object.keys(fileJson));
      expect(Object.keys(ckpt.trainCfg.train_cfg as object)).toEqual(Object.keys(fileJson.train_cfg));
      expect(ckpt.trainCfg.train_cfg).not.toHaveProperty("base_lr");
      expect(ckpt.modelCfg).toEqual(JSON.parse(readFileSync(join(repo.root, "configs/model.json"), "utf8")));
      expect(ckpt.step).toBe(2);
    }
    expect(TINY_TRAIN.B).not.toBe(2); // the run used this config, not the helper's
  });
});

describe('val_source "sft" without SFT val caches', () => {
  test("the sft phase stops before writing anything, listing every missing _val cache and why it is needed", async () => {
    const repo = makeTinyRepo({ sft: true, sftVal: "sft" });
    const { rmSync, readdirSync } = await import("node:fs");
    const sftDir = join(repo.root, "data/cache/sft");
    for (const f of readdirSync(sftDir)) if (f.includes("_val.")) rmSync(join(sftDir, f));
    repo.writeConfig("s.json", { ...goodSft, sft_sources: { dolly: 1, oasst1: 1 }, val_source: "sft" });
    let error: Error | null = null;
    try {
      await runTraining(
        { phase: "sft", configPath: "configs/s.json", device: "cpu", resume: { kind: "auto" } },
        { repoRoot: repo.root, out: captureStream(), stop: { requested: null } },
      );
    } catch (e) {
      error = e as Error;
    }
    expect(error).not.toBeNull();
    expect(exitCodeOf(error)).toBe(2);
    const m = error!.message;
    for (const source of ["dolly", "oasst1"]) {
      expect(m).toContain(`${join(sftDir, `${source}_val.bin`)} `);
      expect(m).toContain(`${join(sftDir, `${source}_val.bin.meta.json`)} `);
    }
    expect(m).not.toContain("primer_val"); // not in the mixture
    expect(m).not.toContain("_train.bin "); // the train caches are there
    expect(m).toContain("val_source sft");
    expect(m).toContain("{source}_{split}.bin");
    expect(existsSync(join(repo.root, "checkpoints"))).toBe(false);
  });
});
