/**
 * Config files (spec: configs/pretrain.json, sft.json, pipeline.json and the model cfg
 * they name): load, validate with typebox, report every problem at once with its JSON path.
 * Relative paths inside configs resolve against REPO_ROOT (the folder `train` runs from).
 */
import { Type, type Static, type TSchema } from "@sinclair/typebox";
import { Value, ValueErrorType } from "@sinclair/typebox/value";
import { parse as parseJsonc, printParseErrorCode, visit, type ParseError } from "jsonc-parser";
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { DEFAULT_LONG_EXAMPLES, LONG_EXAMPLE_RULES, type LongExampleRule } from "./data/long-examples.ts";
import { type Mixture, mixtureOf, mixtureProblems, SFT_SOURCES, STREAM_SOURCES, type StreamSource } from "./data/paths.ts";
import { InputError } from "./errors.ts";
import { INT32_MAX, modelCfgDifferences, modelCfgProblems, type ModelCfg } from "./model/config.ts";
import { estimateRunMemory } from "./model/memory.ts";
import { availableMemoryBytes } from "./util/memory.ts";
import { formatBytes, InputFileError, jsonDepthExceeds, MAX_CONFIG_BYTES, MAX_JSON_DEPTH, readInputText } from "./util/input-file.ts";

/** A problem with the user's input: the CLI prints the message and exits 2. */
export class ConfigError extends InputError {
  override name = "ConfigError";
}


const PositiveInt = Type.Integer({ minimum: 1, maximum: INT32_MAX, description: "expected an integer from 1 to 2147483647 (2^31 - 1)" });
const NonNegativeInt = Type.Integer({ minimum: 0, maximum: INT32_MAX, description: "expected an integer from 0 to 2147483647 (2^31 - 1)" });
const Seed = Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER, description: "expected an integer from 0 to 2^53 - 1" });
// the hyperparameters reach the native step as float32: a larger value would be infinite there
const FLOAT32_MAX = 3.4028234663852886e38;
const NonNegative = Type.Number({
  minimum: 0,
  maximum: FLOAT32_MAX,
  description: "expected a number from 0 to 3.4e38 (the step runs in float32)",
});
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

/** Where runs write, under REPO_ROOT: one phase alone in checkpoints/, a finished pretrain in checkpoints/pretrain/. */
export const CHECKPOINT_DIR = "checkpoints";
export const PRETRAIN_CHECKPOINT_DIR = join(CHECKPOINT_DIR, "pretrain");

/** The spec's defaults for the keys of a phase config other than train_cfg. */
export const PHASE_DEFAULTS = {
  /** pretrain's `sources` */
  sources: { wiki: 0.784, roam: 0.196, primer: 0.02 },
  val_source: "wiki",
  /** sft's `init_from`: the pretrain best, where a pipeline or an SFT after `--phase pretrain` puts it */
  init_from: join(PRETRAIN_CHECKPOINT_DIR, "best.pt"),
} as const;

/** `"init_from": "none"`: SFT starts from fresh weights, asked for explicitly. */
export const INIT_FROM_NONE = "none";

const TrainCfgSchema = Type.Object(
  {
    seed: Type.Optional(Seed),
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
    eps: Type.Optional(
      Type.Number({
        minimum: 1.1754943508222875e-38,
        maximum: FLOAT32_MAX,
        description: "expected a number from 1.2e-38 to 3.4e38 (above 0 in float32)",
      }),
    ),
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
    sources: Type.Optional(probsSchema(STREAM_SOURCES)),
    val_source: Type.Optional(Type.Union(STREAM_SOURCES.map((s) => Type.Literal(s)))),
  },
  { additionalProperties: false },
);

const SftSchema = Type.Object(
  {
    model_cfg_path: Type.String({ minLength: 1 }),
    init_from: Type.Optional(
      Type.String({
        minLength: 1,
        description: `expected a checkpoint path, or "${INIT_FROM_NONE}" to start from fresh weights (omit the key to start from ${PHASE_DEFAULTS.init_from})`,
      }),
    ),
    train_cfg: TrainCfgSchema,
    sft_sources: probsSchema(SFT_SOURCES),
    val_source: Type.Optional(Type.Union([...STREAM_SOURCES, "sft" as const].map((s) => Type.Literal(s)))),
    long_examples: Type.Optional(Type.Union(LONG_EXAMPLE_RULES.map((r) => Type.Literal(r)))),
  },
  { additionalProperties: false },
);

const PipelineSchema = Type.Object(
  { pretrain_config_path: Type.String({ minLength: 1 }), sft_config_path: Type.String({ minLength: 1 }) },
  { additionalProperties: false },
);

/**
 * The values a config took from the defaults, in the config's own shape (its omitted keys
 * only). train_cfg stays the file verbatim, so these are what a checkpoint records beside it
 * for a resume to continue with the same values when a later version changes a default.
 */
export type DefaultsUsed = {
  train_cfg: Partial<TrainCfg>;
  sources?: Record<string, number>;
  val_source?: string;
  init_from?: string;
};

function defaultsUsed(obj: Record<string, unknown>, phase: "pretrain" | "sft"): DefaultsUsed {
  const given = isObject(obj.train_cfg) ? obj.train_cfg : {};
  const used: DefaultsUsed = {
    train_cfg: Object.fromEntries(Object.entries(TRAIN_DEFAULTS).filter(([k]) => !(k in given))) as Partial<TrainCfg>,
  };
  if (phase === "pretrain" && obj.sources === undefined) used.sources = { ...PHASE_DEFAULTS.sources };
  if (obj.val_source === undefined) used.val_source = PHASE_DEFAULTS.val_source;
  if (phase === "sft" && obj.init_from === undefined) used.init_from = PHASE_DEFAULTS.init_from;
  return used;
}

/**
 * A resumed run continues with the defaults it started with: for each key the config still
 * omits, the value its checkpoint recorded (DefaultsUsed) rather than this version's default.
 * Keys the config now gives win; keys it omits that were not recorded take today's default.
 * Returns the config to continue with and, for each recorded value that is not today's
 * default, "key value (the default is now x)". Throws a ConfigError for a malformed record.
 */
export function withRecordedDefaults<C extends PhaseConfig>(config: C, recorded: Readonly<Record<string, unknown>>, source: string): { config: C; kept: string[] } {
  const kept: string[] = [];
  const problems: string[] = [];
  const keep = (key: string, value: unknown, now: unknown) => {
    if (JSON.stringify(value) !== JSON.stringify(now)) kept.push(`${key} ${JSON.stringify(value)} (the default is now ${JSON.stringify(now)})`);
  };
  const recordedTrain = isObject(recorded.train_cfg) ? recorded.train_cfg : {};
  const train: Record<string, unknown> = { ...config.train };
  const trainDefaults: Record<string, unknown> = {};
  for (const [key, now] of Object.entries(config.defaulted.train_cfg)) {
    const value = key in recordedTrain ? recordedTrain[key] : now;
    trainDefaults[key] = train[key] = value;
    if (key in recordedTrain) keep(`train_cfg.${key}`, value, now);
  }
  problems.push(...schemaProblems(TrainCfgSchema, trainDefaults).map((p) => `/train_cfg${p}`));
  const defaulted: DefaultsUsed = { ...config.defaulted, train_cfg: trainDefaults as Partial<TrainCfg> };
  let sources = config.sources;
  if (config.defaulted.sources !== undefined && isObject(recorded.sources)) {
    const mix = mixtureProblems(recorded.sources, "streams");
    problems.push(...mix.map((p) => `/sources: ${p}`));
    if (mix.length === 0) {
      defaulted.sources = recorded.sources as Record<string, number>;
      sources = mixtureOf(defaulted.sources, "streams");
      keep("sources", recorded.sources, config.defaulted.sources);
    }
  }
  let valSource = config.valSource;
  if (config.defaulted.val_source !== undefined && recorded.val_source !== undefined) {
    const allowed: readonly unknown[] = config.phase === "sft" ? [...STREAM_SOURCES, "sft"] : STREAM_SOURCES;
    if (!allowed.includes(recorded.val_source)) problems.push(`/val_source: expected one of ${allowed.join(", ")}, got ${shown(recorded.val_source)}`);
    else {
      defaulted.val_source = valSource = recorded.val_source as StreamSource;
      keep("val_source", recorded.val_source, config.defaulted.val_source);
    }
  }
  if (problems.length > 0) throw new ConfigError(`${source}: the train defaults it records are invalid:\n${problems.map((p) => `  ${p}`).join("\n")}`);
  return { config: { ...config, train: train as TrainCfg, sources, valSource, defaulted }, kept };
}

interface PhaseConfigBase {
  file: string; // absolute path of the config file
  raw: Record<string, unknown>; // the file's JSON verbatim: stored as train_cfg in checkpoints
  modelCfgFile: string;
  modelCfgRaw: ModelCfg & Record<string, unknown>; // stored as model_cfg
  model: ModelCfg;
  train: TrainCfg;
  /** What the omitted keys took from the defaults (see DefaultsUsed). */
  defaulted: DefaultsUsed;
}

export interface PretrainConfig extends PhaseConfigBase {
  phase: "pretrain";
  sources: Mixture; // of stream sources
  valSource: StreamSource;
}

export interface SftConfig extends PhaseConfigBase {
  phase: "sft";
  sources: Mixture; // of SFT sources
  valSource: StreamSource | "sft";
  /** SFT's start (when it resumes nothing): the checkpoint's absolute path, or null for fresh weights ("none"). */
  initFrom: string | null;
  /** init_from was omitted: initFrom is the default, PHASE_DEFAULTS.init_from. */
  initFromDefault: boolean;
  longExamples: LongExampleRule; // what a row holds of an example longer than T+1 (src/data/long-examples.ts)
}

export type PhaseConfig = PretrainConfig | SftConfig;

export interface PipelineConfig {
  file: string;
  pretrain: PretrainConfig;
  sft: SftConfig;
}

/**
 * Which phase a stored train_cfg belongs to (configs are stored verbatim): an sft config
 * always has sft_sources; a pretrain config has sources, or omits it (the default mixture).
 */
export function phaseOfTrainCfg(trainCfg: unknown): "pretrain" | "sft" | null {
  if (!isObject(trainCfg)) return null;
  if ("sft_sources" in trainCfg) return "sft";
  if ("sources" in trainCfg || "model_cfg_path" in trainCfg) return "pretrain";
  return null;
}

/** A JSON file read: its value, or why it could not be read (missing, unreadable, bad syntax). */
type JsonRead = { ok: true; value: unknown; duplicates: string[] } | { ok: false; missing: boolean; message: string };

const SYNTAX_ERRORS: Readonly<Record<string, string>> = {
  InvalidSymbol: "unexpected character",
  InvalidNumberFormat: "invalid number",
  PropertyNameExpected: "expected a key in double quotes (a trailing comma?)",
  ValueExpected: "expected a value",
  ColonExpected: "expected ':' after the key",
  CommaExpected: "expected ',' between two entries",
  CloseBraceExpected: "expected '}'",
  CloseBracketExpected: "expected ']'",
  EndOfFileExpected: "unexpected text after the end of the JSON value",
  InvalidCommentToken: "comments are not allowed in JSON",
  UnexpectedEndOfString: "unterminated string",
};

/** Keys given twice in one object (JSON.parse would silently keep the last), as "/path: ..." problems. */
function duplicateKeys(text: string): string[] {
  const found: string[] = [];
  const open: Array<Set<string>> = [];
  visit(text, {
    onObjectBegin: () => void open.push(new Set()),
    onObjectEnd: () => void open.pop(),
    onObjectProperty: (key, _offset, _length, line, character, path) => {
      const keys = open[open.length - 1];
      if (keys === undefined) return;
      if (keys.has(key)) {
        found.push(`${cut(`/${[...path(), key].join("/")}`)}: key "${cut(key)}" given twice (again at line ${line + 1}, column ${character + 1}); give it once`);
      }
      keys.add(key);
    },
  });
  return found;
}

function readJson(file: string): JsonRead {
  let text: string;
  try {
    text = readInputText(file, { maxBytes: MAX_CONFIG_BYTES, expected: "a JSON config file" });
  } catch (e) {
    if (!(e instanceof InputFileError)) throw e;
    return { ok: false, missing: e.fsCode === "ENOENT", message: e.fsCode === "ENOENT" ? "file not found" : e.reason };
  }
  if (text.startsWith("\uFEFF")) text = text.slice(1); // a byte order mark, as some editors write
  if (jsonDepthExceeds(text, MAX_JSON_DEPTH)) {
    return { ok: false, missing: false, message: `JSON nested deeper than ${MAX_JSON_DEPTH} levels; expected a flat config object` };
  }
  const errors: ParseError[] = [];
  const value = parseJsonc(text, errors, { disallowComments: true, allowTrailingComma: false, allowEmptyContent: false });
  if (errors.length > 0) {
    const e = errors[0]!;
    const before = text.slice(0, e.offset).split("\n");
    const line = before.length;
    const column = before[before.length - 1]!.length + 1;
    const code = printParseErrorCode(e.error);
    const what = SYNTAX_ERRORS[code] ?? code;
    return { ok: false, missing: false, message: `invalid JSON at line ${line}, column ${column}: ${what}` };
  }
  return { ok: true, value, duplicates: duplicateKeys(text) };
}

/** Reads a JSON file; syntax errors name the file, line and column. */
export function readJsonFile(file: string, what: string): unknown {
  const r = readJson(file);
  if (!r.ok) throw new ConfigError(`${what} ${file}: ${r.message}`);
  return r.value;
}

/** Longest value or key quoted in a message; longer ones are cut with "...". */
const MAX_SHOWN_CHARS = 80;
/** Problems listed per file; the rest are counted ("and K more"). */
export const MAX_LISTED_PROBLEMS = 20;

function cut(s: string): string {
  return s.length > MAX_SHOWN_CHARS ? `${s.slice(0, MAX_SHOWN_CHARS)}...` : s;
}

/** A value as the user wrote it (JSON.stringify shows Infinity, from 1e999, as null), cut to a readable length. */
function shown(v: unknown): string {
  return cut(typeof v === "number" && !Number.isFinite(v) ? String(v) : (JSON.stringify(v) ?? String(v)));
}

/** The first MAX_LISTED_PROBLEMS lines, then "and K more". */
export function capped(lines: readonly string[]): string[] {
  if (lines.length <= MAX_LISTED_PROBLEMS) return [...lines];
  return [...lines.slice(0, MAX_LISTED_PROBLEMS), `and ${lines.length - MAX_LISTED_PROBLEMS} more`];
}

/** typebox's errors as "json/path: what is wrong", one line per distinct problem. */
function schemaProblems(schema: TSchema, value: unknown): string[] {
  const lines = [...Value.Errors(schema, value)].map((e) => {
    const path = cut(e.path || "/");
    const key = path.slice(path.lastIndexOf("/") + 1);
    if (e.type === ValueErrorType.ObjectAdditionalProperties && e.schema.properties) {
      return `${path}: unknown key "${cut(key)}" (expected one of: ${Object.keys(e.schema.properties).join(", ")})`;
    }
    if (e.type === ValueErrorType.ObjectRequiredProperty) return `${path}: missing required key "${key}"`;
    if (e.schema.anyOf && e.schema.anyOf.every((s: TSchema) => "const" in s)) {
      const allowed = e.schema.anyOf.map((s: TSchema) => JSON.stringify(s.const)).join(", ");
      return `${path}: expected one of ${allowed}, got ${shown(e.value)}`;
    }
    if (typeof e.value === "number" && !Number.isFinite(e.value)) return `${path}: expected a finite number, got ${shown(e.value)}`;
    return `${path}: ${e.schema.description ?? e.message}${e.value === undefined ? "" : `, got ${shown(e.value)}`}`;
  });
  // one problem per JSON path: the first is the most telling (a missing key, not its type)
  const seen = new Set<string>();
  return lines.filter((line) => {
    const path = line.slice(0, line.indexOf(": "));
    return seen.has(path) ? false : (seen.add(path), true);
  });
}

/** What is wrong with one file: the whole file (unreadable), or a list of "json/path: problem". */
interface Section {
  title: string; // e.g. "pretrain config /abs/configs/pretrain.json"
  whole?: string;
  problems: string[];
}

function failIfAny(sections: readonly Section[]): void {
  const bad = sections.filter((s) => s.whole !== undefined || s.problems.length > 0);
  if (bad.length === 0) return;
  throw new ConfigError(
    bad
      .map((s) => (s.whole !== undefined ? `${s.title}: ${s.whole}` : `${s.title} is invalid:\n${capped(s.problems).map((p) => `  ${p}`).join("\n")}`))
      .join("\n"),
  );
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

/** The model cfg a phase config names: problems of a missing file go to the naming key. */
function checkModelCfg(
  file: string,
  namedBy: string,
  keyProblems: string[],
): { cfg: (ModelCfg & Record<string, unknown>) | null; sections: Section[] } {
  const title = `model cfg ${file} (model_cfg_path of ${namedBy})`;
  const r = readJson(file);
  if (!r.ok) {
    if (r.missing) keyProblems.push(`/model_cfg_path: model cfg file ${file} not found`);
    return { cfg: null, sections: r.missing ? [] : [{ title, whole: r.message, problems: [] }] };
  }
  const problems = [...r.duplicates, ...schemaProblems(ModelCfgSchema, r.value)];
  if (problems.length === r.duplicates.length) problems.push(...modelCfgProblems(r.value as Record<string, unknown>).map((p) => `/${p}`));
  return { cfg: problems.length === 0 ? (r.value as ModelCfg & Record<string, unknown>) : null, sections: [{ title, problems }] };
}

/** A run the machine cannot hold (src/model/memory.ts), as a problem naming what takes the memory; else null. */
function memoryProblem(model: ModelCfg, train: TrainCfg, modelCfgFile: string): string | null {
  const need = estimateRunMemory(model, train);
  const available = availableMemoryBytes();
  if (need.total <= available) return null;
  const parts = need.parts.filter(([, b]) => b > 0).map(([what, b]) => `${what} ${formatBytes(b)}`).join(", ");
  return (
    `/train_cfg: this run needs about ${formatBytes(need.total)} of memory (${parts}) with the model of ${modelCfgFile} and B=${train.B}, ` +
    `eval_batches=${train.eval_batches}, more than the ${formatBytes(available)} available on this machine; use a smaller model, B or eval_batches`
  );
}

/** Loads and checks a phase config and its model cfg, collecting every problem. */
function checkPhaseConfig(
  file: string,
  phase: "pretrain" | "sft",
  repoRoot: string,
  namedBy?: { key: string; file: string; problems: string[] },
): { config: PhaseConfig | null; sections: Section[] } {
  const abs = resolve(repoRoot, file);
  const title = `${phase} config ${abs}`;
  const r = readJson(abs);
  if (!r.ok) {
    if (r.missing && namedBy) {
      namedBy.problems.push(`/${namedBy.key}: ${phase} config file ${abs} not found`);
      return { config: null, sections: [] };
    }
    return { config: null, sections: [{ title, whole: r.message, problems: [] }] };
  }
  const raw = r.value;
  const schema = phase === "pretrain" ? PretrainSchema : SftSchema;
  const problems = [...r.duplicates, ...schemaProblems(schema, raw)];
  const other = phase === "pretrain" ? "sft" : "pretrain";
  if (isObject(raw) && (other === "sft" ? "sft_sources" : "sources") in raw) {
    problems.unshift(`/: this is ${other === "sft" ? "an sft" : "a pretrain"} config (it has "${other === "sft" ? "sft_sources" : "sources"}"), expected ${phase === "sft" ? "an sft" : "a pretrain"} config`);
  }
  const obj = isObject(raw) ? raw : {};
  if (phase === "pretrain" && obj.val_source === "sft") {
    const i = problems.findIndex((p) => p.startsWith("/val_source: "));
    const hint = `/val_source: "sft" (the SFT val caches) is only allowed in an sft config; pretrain validates on a stream source: "wiki", "roam" or "primer"`;
    if (i >= 0) problems[i] = hint;
  }
  const probsKey = phase === "pretrain" ? "sources" : "sft_sources";
  const cacheKind = phase === "pretrain" ? "streams" : "sft";
  const clean = (prefix: string) => !problems.some((p) => p.startsWith(`${prefix}/`) || p.startsWith(`${prefix}:`));
  if (isObject(obj[probsKey]) && clean(`/${probsKey}`)) {
    problems.push(...mixtureProblems(obj[probsKey], cacheKind).map((p) => `/${probsKey}: ${p}`));
  }
  const train = { ...TRAIN_DEFAULTS, ...(isObject(obj.train_cfg) ? obj.train_cfg : {}) } as TrainCfg;
  if (isObject(obj.train_cfg) && clean("/train_cfg/min_lr") && clean("/train_cfg/base_lr") && train.min_lr > train.base_lr) {
    problems.push(`/train_cfg/min_lr: ${train.min_lr} is above base_lr ${train.base_lr}`);
  }
  // An explicit warmup longer than the run is a mistake; the default 200 on a tiny run is not.
  if (isObject(obj.train_cfg) && obj.train_cfg.warmup_steps !== undefined && clean("/train_cfg/warmup_steps") && clean("/train_cfg/total_steps") && train.warmup_steps > train.total_steps) {
    problems.push(`/train_cfg/warmup_steps: ${train.warmup_steps} is above total_steps ${train.total_steps}: the learning rate would never reach base_lr`);
  }
  let model: (ModelCfg & Record<string, unknown>) | null = null;
  const modelSections: Section[] = [];
  let modelCfgFile = "";
  if (typeof obj.model_cfg_path === "string" && obj.model_cfg_path !== "") {
    modelCfgFile = resolve(repoRoot, obj.model_cfg_path);
    const m = checkModelCfg(modelCfgFile, abs, problems);
    model = m.cfg;
    modelSections.push(...m.sections);
  }
  const sections = [{ title: namedBy ? `${title} (${namedBy.key} of ${namedBy.file})` : title, problems }, ...modelSections];
  if (model === null || sections.some((s) => s.whole !== undefined || s.problems.length > 0)) return { config: null, sections };

  const memory = memoryProblem(model, train, modelCfgFile);
  if (memory !== null) return { config: null, sections: [{ title, problems: [memory] }] };

  const probs = (obj[probsKey] ?? PHASE_DEFAULTS.sources) as Record<string, number>;
  const base = { file: abs, raw: obj, modelCfgFile, modelCfgRaw: model, model: model as ModelCfg, train, sources: mixtureOf(probs, cacheKind), defaulted: defaultsUsed(obj, phase) };
  if (phase === "pretrain") {
    const config: PretrainConfig = {
      ...base,
      phase,
      valSource: (obj.val_source as StreamSource | undefined) ?? PHASE_DEFAULTS.val_source,
    };
    return { config, sections: [] };
  }
  const initFrom = (obj.init_from as string | undefined) ?? PHASE_DEFAULTS.init_from;
  const config: SftConfig = {
    ...base,
    phase,
    valSource: (obj.val_source as StreamSource | "sft" | undefined) ?? PHASE_DEFAULTS.val_source,
    initFrom: initFrom === INIT_FROM_NONE ? null : resolve(repoRoot, initFrom),
    initFromDefault: obj.init_from === undefined,
    longExamples: (obj.long_examples as LongExampleRule | undefined) ?? DEFAULT_LONG_EXAMPLES,
  };
  return { config, sections: [] };
}

/** Loads a pretrain or sft config and the model cfg it names; throws one ConfigError listing every problem. */
export function loadPhaseConfig(file: string, phase: "pretrain" | "sft", repoRoot: string): PhaseConfig {
  const { config, sections } = checkPhaseConfig(file, phase, repoRoot);
  failIfAny(sections);
  return config!;
}

/** Loads a pipeline config and both phase configs it names; every problem of every file at once. */
export function loadPipelineConfig(file: string, repoRoot: string): PipelineConfig {
  const abs = resolve(repoRoot, file);
  const r = readJson(abs);
  if (!r.ok) throw new ConfigError(`pipeline config ${abs}: ${r.message}`);
  const raw = r.value;
  const problems = [...r.duplicates, ...schemaProblems(PipelineSchema, raw)];
  const obj = isObject(raw) ? raw : {};
  const sections: Section[] = [{ title: `pipeline config ${abs}`, problems }];
  const sub = <P extends "pretrain" | "sft">(phase: P): PhaseConfig | null => {
    const key = `${phase}_config_path`;
    const path = obj[key];
    if (typeof path !== "string" || path === "") return null;
    const r = checkPhaseConfig(path, phase, repoRoot, { key, file: abs, problems });
    sections.push(...r.sections);
    return r.config;
  };
  const pretrain = sub("pretrain") as PretrainConfig | null;
  const sft = sub("sft") as SftConfig | null;
  if (pretrain && sft) {
    const differing = modelCfgDifferences(pretrain.model, sft.model);
    if (differing.length > 0) {
      problems.push(
        `the pretrain and sft configs name different models (${pretrain.modelCfgFile} vs ${sft.modelCfgFile}: ${differing.join(", ")}); ` +
          `SFT starts from the pretrained weights, so both must name the same model shape`,
      );
    }
  }
  failIfAny(sections);
  return { file: abs, pretrain: pretrain!, sft: sft! };
}
