/**
 * Config files (spec: configs/pretrain.json, sft.json, pipeline.json and the model cfg
 * they name): load, validate with typebox, report every problem at once with its JSON path.
 * Relative paths inside configs resolve against REPO_ROOT (the folder `train` runs from).
 */
import { Type, type Static, type TSchema } from "@sinclair/typebox";
import { Value } from "@sinclair/typebox/value";
import { parse as parseJsonc, printParseErrorCode, type ParseError } from "jsonc-parser";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { SFT_SOURCES, STREAM_SOURCES, type SftSource, type StreamSource } from "./data/paths.ts";
import { InputError } from "./errors.ts";
import { modelCfgProblems, type ModelCfg } from "./model/config.ts";

/** A problem with the user's input: the CLI prints the message and exits 2. */
export class ConfigError extends InputError {
  override name = "ConfigError";
}


const PositiveInt = Type.Integer({ minimum: 1 });
const NonNegativeInt = Type.Integer({ minimum: 0 });
const NonNegative = Type.Number({ minimum: 0 });
const Probability = Type.Number({ minimum: 0 });

const ModelCfgSchema = Type.Object(
  { V: PositiveInt, T: PositiveInt, C: PositiveInt, L: PositiveInt, H: PositiveInt, d_ff: PositiveInt },
  { additionalProperties: false },
);

/** Every train knob, with the spec's defaults (TrainConfig). */
export const TRAIN_DEFAULTS = {
  seed: 42,
  B: 32,
  total_steps: 20000,
  eval_every: 200,
  eval_batches: 50,
  ckpt_every: 1000,
  log_every: 50,
  base_lr: 3e-4,
  warmup_steps: 200,
  min_lr: 3e-5,
  grad_clip: 1.0,
  accum_steps: 1,
  weight_decay: 0.1,
  beta1: 0.9,
  beta2: 0.95,
  eps: 1e-8,
  max_nonfinite_steps: 3,
};

const TrainCfgSchema = Type.Object(
  {
    seed: Type.Optional(NonNegativeInt),
    B: Type.Optional(PositiveInt),
    total_steps: Type.Optional(PositiveInt),
    eval_every: Type.Optional(PositiveInt),
    eval_batches: Type.Optional(PositiveInt),
    ckpt_every: Type.Optional(PositiveInt),
    log_every: Type.Optional(PositiveInt),
    base_lr: Type.Optional(NonNegative),
    warmup_steps: Type.Optional(NonNegativeInt),
    min_lr: Type.Optional(NonNegative),
    grad_clip: Type.Optional(NonNegative), // 0 disables clipping
    accum_steps: Type.Optional(Type.Literal(1, { description: "gradient accumulation is not supported (spec non-goal)" })),
    weight_decay: Type.Optional(NonNegative),
    beta1: Type.Optional(Type.Number({ minimum: 0, exclusiveMaximum: 1 })),
    beta2: Type.Optional(Type.Number({ minimum: 0, exclusiveMaximum: 1 })),
    eps: Type.Optional(Type.Number({ exclusiveMinimum: 0 })),
    max_nonfinite_steps: Type.Optional(PositiveInt),
  },
  { additionalProperties: false },
);
export type TrainCfg = Required<Static<typeof TrainCfgSchema>>;

function probsSchema(names: readonly string[]) {
  return Type.Object(Object.fromEntries(names.map((n) => [n, Type.Optional(Probability)])), {
    additionalProperties: false,
  });
}

const PretrainSchema = Type.Object(
  {
    model_cfg_path: Type.String({ minLength: 1 }),
    train_cfg: TrainCfgSchema,
    sources: probsSchema(STREAM_SOURCES),
    val_source: Type.Optional(Type.Union(STREAM_SOURCES.map((s) => Type.Literal(s)))),
  },
  { additionalProperties: false },
);

const SftSchema = Type.Object(
  {
    model_cfg_path: Type.String({ minLength: 1 }),
    init_from: Type.Optional(Type.Union([Type.String({ minLength: 1 }), Type.Null()])),
    train_cfg: TrainCfgSchema,
    sft_sources: probsSchema(SFT_SOURCES),
    val_source: Type.Optional(Type.Union([...STREAM_SOURCES, "sft" as const].map((s) => Type.Literal(s)))),
  },
  { additionalProperties: false },
);

const PipelineSchema = Type.Object(
  { pretrain_config_path: Type.String({ minLength: 1 }), sft_config_path: Type.String({ minLength: 1 }) },
  { additionalProperties: false },
);

interface PhaseConfigBase {
  file: string; // absolute path of the config file
  raw: Record<string, unknown>; // the file's JSON verbatim: stored as train_cfg in checkpoints
  modelCfgFile: string;
  modelCfgRaw: ModelCfg & Record<string, unknown>; // stored as model_cfg
  model: ModelCfg;
  train: TrainCfg;
}

export interface PretrainConfig extends PhaseConfigBase {
  phase: "pretrain";
  sources: Partial<Record<StreamSource, number>>; // normalized, zero entries dropped
  valSource: StreamSource;
}

export interface SftConfig extends PhaseConfigBase {
  phase: "sft";
  sources: Partial<Record<SftSource, number>>;
  valSource: StreamSource | "sft";
  initFrom: string | null; // absolute path, or null for a fresh model
}

export type PhaseConfig = PretrainConfig | SftConfig;

export interface PipelineConfig {
  file: string;
  pretrain: PretrainConfig;
  sft: SftConfig;
}

/** Which phase a stored train_cfg belongs to (configs are stored verbatim). */
export function phaseOfTrainCfg(trainCfg: unknown): "pretrain" | "sft" | null {
  if (trainCfg === null || typeof trainCfg !== "object") return null;
  if ("sft_sources" in trainCfg) return "sft";
  if ("sources" in trainCfg) return "pretrain";
  return null;
}

/** Reads a JSON file; syntax errors name the file, line and column. */
export function readJsonFile(file: string, what: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new ConfigError(`${what} ${file}: ${code === "ENOENT" ? "file not found" : (e as Error).message}`);
  }
  const errors: ParseError[] = [];
  const value = parseJsonc(text, errors, { disallowComments: true, allowTrailingComma: false, allowEmptyContent: false });
  if (errors.length > 0) {
    const e = errors[0]!;
    const before = text.slice(0, e.offset).split("\n");
    const line = before.length;
    const column = before[before.length - 1]!.length + 1;
    throw new ConfigError(`${what} ${file}: invalid JSON at line ${line}, column ${column}: ${printParseErrorCode(e.error)}`);
  }
  return value;
}

/** typebox's errors as "json/path: what is wrong", one line per distinct problem. */
function schemaProblems(schema: TSchema, value: unknown): string[] {
  const lines = [...Value.Errors(schema, value)].map((e) => {
    const path = e.path || "/";
    if (e.message === "Unexpected property" && e.schema.properties) {
      const key = path.slice(path.lastIndexOf("/") + 1);
      return `${path}: unknown key "${key}" (expected one of: ${Object.keys(e.schema.properties).join(", ")})`;
    }
    if (e.schema.anyOf && e.schema.anyOf.every((s: TSchema) => "const" in s)) {
      const allowed = e.schema.anyOf.map((s: TSchema) => JSON.stringify(s.const)).join(", ");
      return `${path}: expected one of ${allowed}, got ${JSON.stringify(e.value)}`;
    }
    return `${path}: ${e.schema.description ?? e.message}${e.value === undefined ? "" : `, got ${JSON.stringify(e.value)}`}`;
  });
  // one problem per JSON path: the first is the most telling (a missing key, not its type)
  const seen = new Set<string>();
  return lines.filter((line) => {
    const path = line.slice(0, line.indexOf(": "));
    return seen.has(path) ? false : (seen.add(path), true);
  });
}

function probabilityProblems(probs: Record<string, number>, key: string): string[] {
  const total = Object.values(probs).reduce((a, b) => a + b, 0);
  return Object.keys(probs).length === 0 || total <= 0 ? [`/${key}: expected at least one probability > 0`] : [];
}

function normalize<K extends string>(probs: Partial<Record<K, number>>): Partial<Record<K, number>> {
  const entries = Object.entries(probs) as Array<[K, number]>;
  const total = entries.reduce((a, [, p]) => a + p, 0);
  return Object.fromEntries(entries.filter(([, p]) => p > 0).map(([k, p]) => [k, p / total])) as Partial<Record<K, number>>;
}

function fail(file: string, what: string, problems: string[]): never {
  throw new ConfigError(`${what} ${file} is invalid:\n${problems.map((p) => `  ${p}`).join("\n")}`);
}

function loadModelCfg(file: string): { raw: ModelCfg & Record<string, unknown>; model: ModelCfg } {
  const raw = readJsonFile(file, "model cfg");
  const problems = schemaProblems(ModelCfgSchema, raw);
  if (problems.length === 0) problems.push(...modelCfgProblems(raw as Record<string, unknown>));
  if (problems.length > 0) fail(file, "model cfg", problems);
  const model = raw as ModelCfg & Record<string, unknown>;
  return { raw: model, model };
}

export function loadPhaseConfig(file: string, phase: "pretrain" | "sft", repoRoot: string): PhaseConfig {
  const abs = resolve(repoRoot, file);
  const raw = readJsonFile(abs, `${phase} config`);
  const schema = phase === "pretrain" ? PretrainSchema : SftSchema;
  const problems = schemaProblems(schema, raw);
  const other = phase === "pretrain" ? "sft" : "pretrain";
  if (raw !== null && typeof raw === "object" && phaseOfTrainCfg(raw) === other) {
    problems.unshift(`/: this is a ${other} config (it has "${other === "sft" ? "sft_sources" : "sources"}"), expected a ${phase} config`);
  }
  const obj = raw as Record<string, unknown>;
  const probsKey = phase === "pretrain" ? "sources" : "sft_sources";
  if (problems.length === 0) problems.push(...probabilityProblems(obj[probsKey] as Record<string, number>, probsKey));
  const train = { ...TRAIN_DEFAULTS, ...((obj?.train_cfg ?? {}) as object) } as TrainCfg;
  if (problems.length === 0 && train.min_lr > train.base_lr) {
    problems.push(`/train_cfg/min_lr: ${train.min_lr} is above base_lr ${train.base_lr}`);
  }
  if (problems.length > 0) fail(abs, `${phase} config`, problems);

  const modelCfgFile = resolve(repoRoot, obj.model_cfg_path as string);
  const { raw: modelCfgRaw, model } = loadModelCfg(modelCfgFile);
  const base = { file: abs, raw: obj, modelCfgFile, modelCfgRaw, model, train };
  if (phase === "pretrain") {
    return {
      ...base,
      phase,
      sources: normalize(obj.sources as Partial<Record<StreamSource, number>>),
      valSource: (obj.val_source as StreamSource | undefined) ?? "wiki",
    };
  }
  const initFrom = obj.init_from as string | null | undefined;
  return {
    ...base,
    phase,
    sources: normalize(obj.sft_sources as Partial<Record<SftSource, number>>),
    valSource: (obj.val_source as StreamSource | "sft" | undefined) ?? "wiki",
    initFrom: initFrom ? resolve(repoRoot, initFrom) : null,
  };
}

export function loadPipelineConfig(file: string, repoRoot: string): PipelineConfig {
  const abs = resolve(repoRoot, file);
  const raw = readJsonFile(abs, "pipeline config");
  const problems = schemaProblems(PipelineSchema, raw);
  if (problems.length > 0) fail(abs, "pipeline config", problems);
  const obj = raw as Static<typeof PipelineSchema>;
  const pretrain = loadPhaseConfig(obj.pretrain_config_path, "pretrain", repoRoot) as PretrainConfig;
  const sft = loadPhaseConfig(obj.sft_config_path, "sft", repoRoot) as SftConfig;
  const differing = (["V", "T", "C", "L", "H", "d_ff"] as const).filter((k) => pretrain.model[k] !== sft.model[k]);
  if (differing.length > 0) {
    fail(abs, "pipeline config", [`the pretrain and sft configs name different models (${differing.join(", ")} differ)`]);
  }
  return { file: abs, pretrain, sft };
}
