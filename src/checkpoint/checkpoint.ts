/**
 * The training checkpoint: a real PyTorch file (torch.load returns the spec's dict)
 *   {"model_cfg": dict, "train_cfg": dict, "model_state": OrderedDict (nanoGPT names,
 *    lm_head.weight last, sharing transformer.wte.weight's storage),
 *    "optimizer_state": torch.optim.AdamW.state_dict() (torch 1.13 form, nanoGPT's two
 *    parameter groups) | None, "step": int, "best_val_loss": float | None}
 * and its mapping to the flat buffers of the native model (src/model/layout.ts).
 *
 * Optimizer indices: torch numbers parameters across groups in order. nanoGPT's group 0
 * holds the tensors with dim >= 2 and group 1 the rest, each in named_parameters order
 * (the layout order), so index i is the i-th tensor of [decay..., no-decay...].
 */
import { phaseOfTrainCfg } from "../config.ts";
import { modelCfgDifferences, modelCfgProblems, numParamsOf, type ModelCfg } from "../model/config.ts";
import { numParams, paramLayout, TIED_LM_HEAD, type ParamSpec } from "../model/layout.ts";
import { CheckpointError, PyDict, PyFloat, PyTuple, Storage, Tensor, pyTypeName } from "./pyvalue.ts";
import type { PyInput, PyValue } from "./pyvalue.ts";
import { archiveNameFor, loadTorchBytes, loadTorchFile, readTorchFile, torchSaveChunks } from "./torchfile.ts";
import { writeFileAtomic } from "../util/atomic.ts";
import { decodedBytesBudget, ValueBudget } from "./budget.ts";
import { formatBytes } from "../util/input-file.ts";

/** AdamW hyper-parameters as stored in the optimizer's param_groups. */
export interface AdamHParams {
  lr: number;
  weightDecay: number; // of the decay group (2-D tensors); the other group has 0
  beta1: number;
  beta2: number;
  eps: number;
}

export interface OptState {
  m: Float32Array; // exp_avg, flat layout
  v: Float32Array; // exp_avg_sq, flat layout
  step: number; // updates applied so far
  hparams: AdamHParams;
  /**
   * The values the run's config took from train's defaults (config.ts DefaultsUsed), kept
   * as param_groups[0]["train_defaults"]: train_cfg is the config verbatim, so this is where
   * the six keys have room for what a resume needs if a later version changes a default.
   * torch keeps unknown group keys through load_state_dict (as it keeps "initial_lr").
   */
  trainDefaults?: Readonly<Record<string, unknown>> | null;
}

/**
 * A flat float32 buffer of the layout read in ranges, never whole: a native model's
 * parameters or moments being saved (NativeModel.readState). read may throw to refuse
 * the values (a diverged model): the write is then abandoned, the old file kept.
 */
export interface FlatSource {
  readonly length: number;
  read(offset: number, dst: Float32Array): void;
}

/** What saveCheckpoint writes: a Checkpoint whose flat buffers may be FlatSources (streamed, not copied). */
export interface CheckpointToSave extends Omit<Checkpoint, "params" | "opt"> {
  params: Float32Array | FlatSource;
  opt: (Omit<OptState, "m" | "v"> & { m: Float32Array | FlatSource; v: Float32Array | FlatSource }) | null;
}

/** Floats per chunk when a FlatSource is streamed into a file (4 MiB: large writes, small memory). */
const STREAM_CHUNK_FLOATS = 1 << 20;

export interface Checkpoint {
  /** Written as model_cfg with all of the object's own keys (a verbatim config may have more
   * than V, T, C, L, H, d_ff); loading returns the file's dict, validated. */
  modelCfg: ModelCfg;
  /** Written verbatim as train_cfg. */
  trainCfg: Readonly<Record<string, unknown>>;
  params: Float32Array; // flat layout
  opt: OptState | null;
  step: number;
  bestValLoss: number | null;
}

const TRAIN_DEFAULTS_KEY = "train_defaults";

const TOP_KEYS = ["model_cfg", "train_cfg", "model_state", "optimizer_state", "step", "best_val_loss"] as const;

/** torch 1.13 AdamW param_group keys after the group's own, in state_dict() order. */
function paramGroup(lr: number, wd: number, betas: PyTuple, eps: number, params: number[], extra: Array<[string, PyValue]> = []): PyDict {
  return new PyDict(false, [
    ["weight_decay", new PyFloat(wd)],
    ["lr", new PyFloat(lr)],
    ["betas", betas],
    ["eps", new PyFloat(eps)],
    ["amsgrad", false],
    ["foreach", null],
    ["maximize", false],
    ["capturable", false],
    ...extra,
    ["params", params],
  ]);
}

/** Layout entries in optimizer index order (nanoGPT groups: decay, then no-decay). */
function optimizerOrder(layout: readonly ParamSpec[]): ParamSpec[] {
  return [...layout.filter((p) => p.decay), ...layout.filter((p) => !p.decay)];
}

/** JSON-like JS values (config objects) as Python values: integral numbers become ints. */
function toPy(v: unknown, where: string): PyInput {
  if (v === null || typeof v === "string" || typeof v === "boolean" || typeof v === "number" || typeof v === "bigint") return v;
  if (v instanceof PyFloat) return v;
  if (Array.isArray(v)) return v.map((x, i) => toPy(x, `${where}[${i}]`));
  if (typeof v === "object" && (Object.getPrototypeOf(v) === Object.prototype || Object.getPrototypeOf(v) === null)) {
    return new PyDict(false, Object.entries(v as object).map(([k, x]) => [k, toPy(x, `${where}.${k}`) as PyValue]));
  }
  throw new TypeError(`${where}: cannot store a ${typeof v} in a checkpoint`);
}

function checkFlat(name: string, a: Float32Array | FlatSource, n: number): void {
  if (!(a instanceof Float32Array || typeof (a as FlatSource)?.read === "function") || a.length !== n) {
    throw new RangeError(`checkpoint ${name}: expected ${n} float32 values for this model, got ${a?.length}`);
  }
}

/**
 * Tensors of one flat buffer: views of an array, or storages that stream the source's
 * ranges through one scratch buffer (shared by all tensors of a save: the writer takes
 * one chunk at a time).
 */
function tensorMaker(flat: Float32Array | FlatSource, scratch: () => Float32Array): (p: ParamSpec) => Tensor {
  if (flat instanceof Float32Array) return (p) => Tensor.of(flat.subarray(p.offset, p.offset + p.size), p.shape);
  return (p) =>
    new Tensor(
      new Storage("float32", {
        numel: p.size,
        *chunks(from: number, to: number) {
          const buf = scratch();
          if (from % 4 !== 0 || to % 4 !== 0) throw new RangeError(`float32 storage read at bytes [${from}, ${to})`);
          for (let at = from / 4; at < to / 4; at += buf.length) {
            const part = buf.subarray(0, Math.min(buf.length, to / 4 - at));
            flat.read(p.offset + at, part);
            yield new Uint8Array(part.buffer, 0, part.byteLength);
          }
        },
      }),
      p.shape,
    );
}

/** The checkpoint dict (tensors view the given buffers or stream from the sources: nothing is copied whole). */
export function encodeCheckpoint(ckpt: CheckpointToSave): PyDict {
  const problems = modelCfgProblems({ ...ckpt.modelCfg });
  if (problems.length > 0) throw new RangeError(`checkpoint model_cfg: ${problems.join("; ")}`);
  const cfg = ckpt.modelCfg;
  const layout = paramLayout(cfg);
  const n = numParams(cfg);
  checkFlat("params", ckpt.params, n);
  if (!Number.isSafeInteger(ckpt.step) || ckpt.step < 0) throw new RangeError(`checkpoint step ${ckpt.step}: expected an integer >= 0`);
  if (ckpt.bestValLoss !== null && typeof ckpt.bestValLoss !== "number") throw new TypeError("checkpoint bestValLoss: expected a number or null");

  let buffer: Float32Array | null = null;
  const scratch = () => (buffer ??= new Float32Array(Math.min(STREAM_CHUNK_FLOATS, n)));
  const modelState = new PyDict(true);
  const param = tensorMaker(ckpt.params, scratch);
  for (const p of layout) modelState.set(p.name, param(p));
  // nanoGPT's state_dict lists lm_head.weight last; it is the same parameter as wte.
  const wte = modelState.get(TIED_LM_HEAD.tiedTo) as Tensor;
  modelState.set(TIED_LM_HEAD.name, new Tensor(wte.storage, wte.shape));

  let optimizerState: PyDict | null = null;
  if (ckpt.opt) {
    const { m, v, step, hparams: h } = ckpt.opt;
    checkFlat("optimizer m", m, n);
    checkFlat("optimizer v", v, n);
    if (!Number.isSafeInteger(step) || step < 0) throw new RangeError(`checkpoint optimizer step ${step}: expected an integer >= 0`);
    const order = optimizerOrder(layout);
    const state = new PyDict();
    // torch creates the per-parameter state at the first update: none before it.
    if (step > 0) {
      const [expAvg, expAvgSq] = [tensorMaker(m, scratch), tensorMaker(v, scratch)];
      order.forEach((p, i) => {
        state.set(i, new PyDict(false, [
          ["step", Tensor.of(Float32Array.of(step), [])],
          ["exp_avg", expAvg(p)],
          ["exp_avg_sq", expAvgSq(p)],
        ]));
      });
    }
    const nDecay = layout.filter((p) => p.decay).length;
    const betas = new PyTuple([new PyFloat(h.beta1), new PyFloat(h.beta2)]); // one object, as torch shares it
    const idx = order.map((_, i) => i);
    optimizerState = new PyDict(false, [
      ["state", state],
      ["param_groups", [
        paramGroup(h.lr, h.weightDecay, betas, h.eps, idx.slice(0, nDecay), ckpt.opt.trainDefaults ? [[TRAIN_DEFAULTS_KEY, toPy(ckpt.opt.trainDefaults, TRAIN_DEFAULTS_KEY) as PyValue]] : []),
        paramGroup(h.lr, 0, betas, h.eps, idx.slice(nDecay)),
      ]],
    ]);
  }

  return new PyDict(false, [
    ["model_cfg", toPy(ckpt.modelCfg, "model_cfg") as PyValue],
    ["train_cfg", toPy(ckpt.trainCfg, "train_cfg") as PyValue],
    ["model_state", modelState],
    ["optimizer_state", optimizerState],
    ["step", ckpt.step],
    ["best_val_loss", ckpt.bestValLoss === null ? null : new PyFloat(ckpt.bestValLoss)],
  ]);
}

export interface SaveOptions {
  /**
   * Called once, when the first file's bytes are all written and before it replaces the old
   * file; throwing an AbandonedWrite (src/util/atomic.ts) leaves every path as it was.
   */
  beforeCommit?(): void;
}

/** Writes the checkpoint to each path (atomically, each a complete torch file, streamed). */
export function saveCheckpoint(paths: string | readonly string[], ckpt: CheckpointToSave, options: SaveOptions = {}): void {
  const dict = encodeCheckpoint(ckpt);
  let check = options.beforeCommit;
  for (const path of typeof paths === "string" ? [paths] : paths) {
    writeFileAtomic(path, (function* () {
      yield* torchSaveChunks(dict, { archiveName: archiveNameFor(path) });
      check?.();
      check = undefined;
    })());
  }
}

// ---------------------------------------------------------------------------------
// Reading

class Reader {
  constructor(readonly source: string) {}
  fail(where: string, msg: string): never {
    throw new CheckpointError(`${this.source}: ${where}: ${msg}`);
  }

  /**
   * A Python dict / list / scalar tree as JSON-like JS (floats and ints both become numbers),
   * within the depth and size budget of budget.ts.
   */
  json(v: PyValue, where: string, budget = new ValueBudget(this.source, where), depth = 0): unknown {
    budget.visit(depth);
    if (v === null || typeof v === "string" || typeof v === "boolean" || typeof v === "number" || typeof v === "bigint") return v;
    if (v instanceof PyFloat) return v.value;
    if (Array.isArray(v)) return v.map((x, i) => this.json(x, `${where}[${i}]`, budget, depth + 1));
    if (v instanceof PyTuple) return v.items.map((x, i) => this.json(x, `${where}[${i}]`, budget, depth + 1));
    if (v instanceof PyDict) {
      return Object.fromEntries(
        [...v.entries()].map(([k, x]) => {
          if (typeof k !== "string") this.fail(where, `key ${String(k).slice(0, 80)} is not a string`);
          return [k, this.json(x, `${where}.${k.slice(0, 80)}`, budget, depth + 1)];
        }),
      );
    }
    return this.fail(where, `holds a ${pyTypeName(v)}, expected plain config values`);
  }

  dict(v: PyValue | undefined, where: string): PyDict {
    if (!(v instanceof PyDict)) this.fail(where, `is a ${pyTypeName(v)}, expected a dict`);
    return v;
  }

  int(v: PyValue | undefined, where: string): number {
    if (typeof v === "number" && Number.isSafeInteger(v)) return v;
    if (v instanceof Tensor && v.numel === 1 && v.shape.length <= 1 && /^(int|uint)/.test(v.dtype)) return Number(v.contiguousData()[0]);
    return this.fail(where, `is a ${pyTypeName(v)}, expected an int`);
  }

  float(v: PyValue | undefined, where: string): number {
    if (v instanceof PyFloat) return v.value;
    if (typeof v === "number") return v;
    // nanoGPT stores best_val_loss as a 0-dim tensor
    if (v instanceof Tensor && v.numel === 1 && v.shape.length <= 1) return v.toFloat32()[0]!;
    return this.fail(where, `is a ${pyTypeName(v)}, expected a float`);
  }

  /** A float tensor of the given shape, as float32 values in row-major order. */
  tensor(v: PyValue | undefined, shape: readonly number[], where: string): Float32Array {
    const want = `(${shape.join(", ")}${shape.length === 1 ? "," : ""})`;
    if (!(v instanceof Tensor)) return this.fail(where, `is a ${pyTypeName(v)}, expected a float32 tensor of size ${want}`);
    if (v.shape.length !== shape.length || v.shape.some((d, i) => d !== shape[i])) {
      this.fail(where, `has size (${v.shape.join(", ")}), expected ${want}`);
    }
    // float16 / bfloat16 widen exactly; anything else would change the values.
    if (v.dtype !== "float32" && v.dtype !== "float16" && v.dtype !== "bfloat16") {
      this.fail(where, `has dtype ${v.dtype}, expected float32`);
    }
    // budget.ts: a saved weight has its own elements (a stride-0 view would expand a small file)
    if (v.numel > v.storage.numel) {
      this.fail(where, `has ${v.numel} elements over a storage of ${v.storage.numel} (overlapping strides ${`(${v.stride.join(", ")})`}); expected a saved tensor with its own elements`);
    }
    return v.toFloat32();
  }
}

const IGNORED_BUFFER = /^transformer\.h\.\d+\.attn\.(bias|masked_bias)$/; // nanoGPT's causal-mask buffers

function decodeModelState(r: Reader, value: PyValue | undefined, cfg: ModelCfg): Float32Array {
  const sd = r.dict(value, "model_state");
  const layout = paramLayout(cfg);
  const flat = new Float32Array(numParams(cfg));
  const keys = [...sd.keys()];
  // torch.compile and DDP wrap the names; nanoGPT strips "_orig_mod." the same way.
  let prefix = "";
  for (let more = keys.length > 0; more; ) {
    const p = ["_orig_mod.", "module."].find((w) => keys.every((k) => typeof k === "string" && k.startsWith(prefix + w)));
    if (p) prefix += p;
    more = p !== undefined;
  }
  const get = (name: string) => sd.get(prefix + name);

  for (const p of layout) {
    const t = get(p.name);
    if (t === undefined) r.fail("model_state", `has no tensor ${p.name} (expected size (${p.shape.join(", ")}) for this model_cfg)`);
    flat.set(r.tensor(t, p.shape, `model_state[${p.name}]`), p.offset);
  }
  const head = get(TIED_LM_HEAD.name);
  if (head !== undefined) {
    const wte = get(TIED_LM_HEAD.tiedTo) as Tensor;
    const where = `model_state[${TIED_LM_HEAD.name}]`;
    const values = r.tensor(head, [cfg.V, cfg.C], where);
    const shared = head instanceof Tensor && head.storage === wte.storage && head.storageOffset === wte.storageOffset &&
      head.stride.every((s, i) => s === wte.stride[i]);
    if (!shared) {
      const emb = flat.subarray(0, cfg.V * cfg.C);
      // Compare bit patterns: equal values (NaN included) mean the same tied weight.
      const a = new Uint32Array(values.buffer, values.byteOffset, values.length);
      const b = new Uint32Array(emb.buffer, emb.byteOffset, emb.length);
      if (!a.every((x, i) => x === b[i])) {
        r.fail(where, `differs from ${TIED_LM_HEAD.tiedTo}; this model ties the LM head to the token embedding (untied heads are not supported)`);
      }
    }
  }
  const known = new Set([...layout.map((p) => p.name), TIED_LM_HEAD.name]);
  const unexpected = keys
    .map((k) => (typeof k === "string" ? k.slice(prefix.length) : String(k)))
    .filter((k) => !known.has(k) && !IGNORED_BUFFER.test(k));
  if (unexpected.length > 0) {
    const shown = unexpected.slice(0, 5).join(", ") + (unexpected.length > 5 ? `, ... (${unexpected.length} in all)` : "");
    r.fail("model_state", `has tensors this model does not have: ${shown}`);
  }
  return flat;
}

function decodeOptimizerState(r: Reader, value: PyValue | undefined, cfg: ModelCfg): OptState | null {
  if (value === null || value === undefined) return null;
  const opt = r.dict(value, "optimizer_state");
  const state = r.dict(opt.get("state"), "optimizer_state['state']");
  const groups = opt.get("param_groups");
  if (!Array.isArray(groups) || groups.length === 0) r.fail("optimizer_state['param_groups']", `is a ${pyTypeName(groups)}, expected a list of groups`);

  const layout = paramLayout(cfg);
  const n = numParams(cfg);
  const nDecay = layout.filter((p) => p.decay).length;
  const lists = groups.map((g, i) => {
    const params = r.dict(g, `optimizer_state['param_groups'][${i}]`).get("params");
    if (!Array.isArray(params) || !params.every((x) => typeof x === "number" && Number.isSafeInteger(x))) {
      r.fail(`optimizer_state['param_groups'][${i}]['params']`, "expected a list of ints");
    }
    return params as number[];
  });
  const sizes = lists.map((l) => l.length);
  let order: ParamSpec[];
  if (sizes.length === 2 && sizes[0] === nDecay && sizes[1] === layout.length - nDecay) order = optimizerOrder(layout);
  else if (sizes.length === 1 && sizes[0] === layout.length) order = layout;
  else {
    return r.fail(
      "optimizer_state['param_groups']",
      `has groups of [${sizes.join(", ")}] tensors; expected nanoGPT's two groups of [${nDecay}, ${layout.length - nDecay}] (dim >= 2, the rest) or one group of ${layout.length}`,
    );
  }
  const specOf = new Map<number, ParamSpec>();
  lists.flat().forEach((idx, i) => {
    if (specOf.has(idx)) r.fail("optimizer_state['param_groups']", `lists parameter ${idx} twice`);
    specOf.set(idx, order[i]!);
  });

  // Hyper-parameters: one set for all groups; weight decay only on the 2-D group.
  const hp = groups.map((g, i) => {
    const where = `optimizer_state['param_groups'][${i}]`;
    const d = g as PyDict;
    if (d.get("amsgrad") === true) r.fail(where, "uses amsgrad, which train's AdamW does not implement");
    if (d.get("maximize") === true) r.fail(where, "uses maximize=True, which train's AdamW does not implement");
    const betas = d.get("betas");
    if (!(betas instanceof PyTuple) || betas.items.length !== 2) r.fail(`${where}['betas']`, `is a ${pyTypeName(betas)}, expected a pair`);
    return {
      lr: r.float(d.get("lr"), `${where}['lr']`),
      weightDecay: r.float(d.get("weight_decay"), `${where}['weight_decay']`),
      beta1: r.float(betas.items[0], `${where}['betas'][0]`),
      beta2: r.float(betas.items[1], `${where}['betas'][1]`),
      eps: r.float(d.get("eps"), `${where}['eps']`),
    };
  });
  const h0 = hp[0]!;
  for (const [i, h] of hp.entries()) {
    for (const k of ["lr", "beta1", "beta2", "eps"] as const) {
      if (h[k] !== h0[k]) r.fail("optimizer_state['param_groups']", `groups differ in ${k} (${h0[k]} vs ${h[k]} in group ${i}); train uses one value for all tensors`);
    }
  }
  const noDecayWd = hp.length === 2 ? hp[1]!.weightDecay : h0.weightDecay;
  if (noDecayWd !== 0) {
    r.fail("optimizer_state['param_groups']", `decays the 1-D tensors (weight_decay ${noDecayWd}); train applies weight decay to tensors with dim >= 2 only`);
  }
  const hparams: AdamHParams = { ...h0, weightDecay: hp.length === 2 ? h0.weightDecay : 0 };
  const recorded = (groups[0] as PyDict).get(TRAIN_DEFAULTS_KEY);
  const where = `optimizer_state['param_groups'][0]['${TRAIN_DEFAULTS_KEY}']`;
  const defaults = recorded === undefined || recorded === null ? null : r.json(recorded, where);
  if (defaults !== null && (typeof defaults !== "object" || Array.isArray(defaults))) r.fail(where, "expected a dict of the config values taken from defaults");
  const trainDefaults = defaults as Record<string, unknown> | null;

  const m = new Float32Array(n);
  const v = new Float32Array(n);
  if (state.size === 0) return { m, v, step: 0, hparams, trainDefaults };
  for (const k of state.keys()) {
    if (typeof k !== "number" || !specOf.has(k)) r.fail("optimizer_state['state']", `has an entry for parameter ${String(k)}, which no group lists`);
  }
  let step: number | null = null;
  for (const [idx, p] of specOf) {
    const where = `optimizer_state['state'][${idx}] (${p.name})`;
    const entry = state.get(idx);
    if (entry === undefined) r.fail("optimizer_state['state']", `has no entry for parameter ${idx} (${p.name}) while others have one`);
    const s = r.dict(entry, where);
    m.set(r.tensor(s.get("exp_avg"), p.shape, `${where}['exp_avg']`), p.offset);
    v.set(r.tensor(s.get("exp_avg_sq"), p.shape, `${where}['exp_avg_sq']`), p.offset);
    const st = r.float(s.get("step"), `${where}['step']`);
    if (!Number.isSafeInteger(st) || st < 0) r.fail(`${where}['step']`, `is ${st}, expected a whole number >= 0`);
    if (step !== null && st !== step) r.fail("optimizer_state['state']", `parameters are at different steps (${step} and ${st}); train keeps one step count`);
    step = st;
  }
  return { m, v, step: step ?? 0, hparams, trainDefaults };
}

/** What a checkpoint says about itself, read before any of its tensors. */
export interface CheckpointHead {
  modelCfg: ModelCfg;
  trainCfg: Record<string, unknown>;
}

export interface DecodeOptions {
  /** The size of the file the value was read from: the floats decoded must fit a small multiple of it (budget.ts). */
  fileBytes?: number;
  /** Called with model_cfg and train_cfg before any tensor is decoded; throws to refuse the checkpoint. */
  accept?(head: CheckpointHead): void;
}

/** The first value of a flat buffer failing ok, named by tensor and index, or null. */
function firstBadValue(cfg: ModelCfg, values: Float32Array, ok: (x: number) => boolean): string | null {
  for (let i = 0; i < values.length; i++) {
    if (ok(values[i]!)) continue;
    const p = paramLayout(cfg).find((q) => i < q.offset + q.size)!;
    return `[${p.name}][${i - p.offset}] is ${values[i]}`;
  }
  return null;
}

/** Weights and moments a run can go on from: finite, exp_avg_sq >= 0, best_val_loss finite. */
function checkValues(r: Reader, ckpt: Checkpoint): void {
  const finite = (x: number) => Number.isFinite(x);
  const bad = firstBadValue(ckpt.modelCfg, ckpt.params, finite);
  if (bad) r.fail(`model_state${bad}`, "expected finite weights (a diverged or corrupted checkpoint)");
  if (ckpt.opt) {
    const m = firstBadValue(ckpt.modelCfg, ckpt.opt.m, finite);
    if (m) r.fail(`optimizer_state exp_avg${m}`, "expected finite moments");
    const v = firstBadValue(ckpt.modelCfg, ckpt.opt.v, (x) => Number.isFinite(x) && x >= 0);
    if (v) r.fail(`optimizer_state exp_avg_sq${v}`, "expected finite values >= 0 (squared gradients)");
  }
  if (ckpt.bestValLoss !== null && !(Number.isFinite(ckpt.bestValLoss) && ckpt.bestValLoss >= 0)) {
    r.fail("best_val_loss", `is ${ckpt.bestValLoss}, expected a finite loss >= 0 or None`);
  }
}

/**
 * The checkpoint in a torch.load result. Tensors are checked by name, size and dtype
 * against the checkpoint's own model_cfg; with expected, the model_cfg must also match
 * it on the shape keys; options.accept sees model_cfg and train_cfg before any tensor
 * is decoded. Weights and moments must be finite (checkValues). Errors name source and the key.
 */
export function decodeCheckpoint(value: PyValue, source: string, expected?: ModelCfg, options: DecodeOptions = {}): Checkpoint {
  const r = new Reader(source);
  if (!(value instanceof PyDict)) return r.fail("checkpoint", `is a ${pyTypeName(value)}, expected a dict with keys ${TOP_KEYS.join(", ")}`);
  const missing = ["model_cfg", "train_cfg", "model_state", "step"].filter((k) => !value.has(k));
  if (missing.length > 0) {
    r.fail("checkpoint", `has no ${missing.join(", ")} (keys: ${[...value.keys()].map(String).join(", ")}); expected ${TOP_KEYS.join(", ")}`);
  }
  const modelCfg = r.json(r.dict(value.get("model_cfg"), "model_cfg"), "model_cfg") as Record<string, unknown>;
  const problems = modelCfgProblems(modelCfg);
  if (problems.length > 0) r.fail("model_cfg", problems.join("; "));
  const cfg = modelCfg as unknown as ModelCfg;
  if (expected) {
    const diff = modelCfgDifferences(cfg, expected);
    if (diff.length > 0) r.fail("model_cfg", `differs from the expected model (checkpoint vs expected: ${diff.join(", ")})`);
  }
  const trainCfg = r.json(r.dict(value.get("train_cfg"), "train_cfg"), "train_cfg") as Record<string, unknown>;
  options.accept?.({ modelCfg: cfg, trainCfg });
  const withOptimizer = value.get("optimizer_state") !== null && value.get("optimizer_state") !== undefined;
  const decodedBytes = 4 * numParamsOf(cfg) * (withOptimizer ? 3 : 1);
  if (options.fileBytes !== undefined && decodedBytes > decodedBytesBudget(options.fileBytes)) {
    r.fail("model_cfg", `declares a model of ${numParamsOf(cfg)} parameters (${formatBytes(decodedBytes)} of float32 with its optimizer state), more than a file of ${options.fileBytes} bytes holds; the file is not a checkpoint of that model`);
  }
  const params = decodeModelState(r, value.get("model_state"), cfg);
  const opt = decodeOptimizerState(r, value.get("optimizer_state"), cfg);
  const step = r.int(value.get("step"), "step");
  if (step < 0) r.fail("step", `is ${step}, expected >= 0`);
  const best = value.get("best_val_loss");
  const bestValLoss = best === undefined || best === null ? null : r.float(best, "best_val_loss");
  const ckpt = { modelCfg: cfg, trainCfg, params, opt, step, bestValLoss };
  checkValues(r, ckpt);
  return ckpt;
}

/** The file size a checkpoint of cfg may have: its float32 weights and moments plus room for the pickle. */
export function maxCheckpointBytes(cfg: ModelCfg): number {
  return 3 * 4 * numParamsOf(cfg) + (64 << 20);
}

/**
 * Reads and checks a checkpoint file (written by train or by torch.save). With expected,
 * a file larger than a checkpoint of that model can be is refused before it is read.
 */
export function loadCheckpoint(path: string, expected?: ModelCfg, options: LoadOptions = {}): Checkpoint {
  const maxBytes = options.maxBytes ?? (expected ? maxCheckpointBytes(expected) : undefined);
  const bytes = readTorchFile(path, maxBytes);
  return decodeCheckpoint(loadTorchBytes(bytes, path), path, expected, { fileBytes: bytes.length, accept: options.accept });
}

export interface LoadOptions {
  /** The largest file accepted (default: maxCheckpointBytes of expected, else the available memory). */
  maxBytes?: number;
  accept?: DecodeOptions["accept"];
}

/** The phase (from train_cfg) of a checkpoint file, or null when train_cfg does not tell. */
export function phaseOfCheckpointFile(path: string, expected?: ModelCfg): "pretrain" | "sft" | null {
  const value = loadTorchFile(path, expected ? maxCheckpointBytes(expected) : undefined);
  const r = new Reader(path);
  const top = r.dict(value, "checkpoint");
  const trainCfg = top.get("train_cfg");
  if (trainCfg === undefined) return null;
  return phaseOfTrainCfg(r.json(trainCfg, "train_cfg"));
}
