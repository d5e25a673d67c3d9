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
import { CheckpointError, PyDict, PyFloat, PyTuple, Storage, Tensor, pyTypeName, widen16 } from "./pyvalue.ts";
import type { PyInput, PyValue } from "./pyvalue.ts";
import { archiveNameFor, torchSaveChunks, withTorchFile } from "./torchfile.ts";
import { availableMemoryBytes } from "../util/memory.ts";
import { writeFileAtomic } from "../util/atomic.ts";
import { decodedBytesBudget, ValueBudget } from "./budget.ts";
import { formatBytes } from "../util/input-file.ts";
import { firstBadFloat } from "../util/floats.ts";

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

/** Floats per chunk when a FlatSource is streamed into a file (1 MiB: the chunk stays in cache through the check, the CRC-32 and the write; measured faster than 4 MiB). */
const STREAM_CHUNK_FLOATS = 1 << 18;

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

  /** v as a float tensor of the given shape (float32, or float16 / bfloat16 that widen exactly), with its own elements. */
  checkTensor(v: PyValue | undefined, shape: readonly number[], where: string): Tensor {
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
    return v;
  }

  /**
   * The values of a float tensor of the given shape in row-major order, passed to
   * use(offset, values) in chunks (values are valid only during the call): a contiguous
   * tensor streams from its storage (a file's record, read in 1 MiB chunks), any other
   * layout is read whole first. The first value failing check is reported by check.fail
   * after the stream ends, so a corrupt record is named by its CRC-32 mismatch first.
   */
  streamTensor(v: PyValue | undefined, shape: readonly number[], where: string, use: (offset: number, values: Float32Array) => void, check?: ValueCheck): void {
    const t = this.checkTensor(v, shape, where);
    let bad: { index: number; value: number } | null = null;
    const visit = (offset: number, values: Float32Array) => {
      if (check && bad === null) {
        const i = firstBadFloat(values, check.nonNegative);
        if (i >= 0) bad = { index: offset + i, value: values[i]! };
      }
      use(offset, values);
    };
    if (t.isContiguous()) {
      const itemsize = t.dtype === "float32" ? 4 : 2;
      let wide: Float32Array | null = null;
      let offset = 0;
      for (const chunk of t.storage.chunks(t.storageOffset * itemsize, (t.storageOffset + t.numel) * itemsize)) {
        const n = chunk.length / itemsize;
        if (t.dtype === "float32") visit(offset, new Float32Array(chunk.buffer, chunk.byteOffset, n));
        else {
          if (wide === null || wide.length < n) wide = new Float32Array(n);
          const values = wide.subarray(0, n);
          widen16(t.dtype as "float16" | "bfloat16", new Uint16Array(chunk.buffer, chunk.byteOffset, n), values);
          visit(offset, values);
        }
        offset += n;
      }
    } else {
      visit(0, t.toFloat32());
    }
    if (bad !== null) check!.fail((bad as { index: number; value: number }).index, (bad as { index: number; value: number }).value);
  }
}

/** What every value of a tensor must be (finite, and with nonNegative >= 0), and the error naming the first that is not. */
interface ValueCheck {
  nonNegative: boolean;
  fail(index: number, x: number): never;
}

/** The flat buffers of the layout that a checkpoint holds (a native model's GPT_STATE_* buffers). */
export type FlatBuffer = "params" | "m" | "v";

/**
 * Where a checkpoint's floats are decoded to, range by range: a NativeModel (its buffers,
 * through gpt_write_state) or whole arrays (loadCheckpoint).
 */
export interface StateSink {
  writeState(which: FlatBuffer, offset: number, src: Float32Array): void;
  readState(which: FlatBuffer, offset: number, dst: Float32Array): void;
  /** Zero moments at step `step`; the moments are written after it. */
  resetOptState(step: number): void;
}

/** Whole arrays as a StateSink (their memory is touched only where written). */
class ArraySink implements StateSink {
  readonly params: Float32Array;
  readonly m: Float32Array;
  readonly v: Float32Array;
  step = 0;
  constructor(n: number) {
    this.params = new Float32Array(n);
    this.m = new Float32Array(n);
    this.v = new Float32Array(n);
  }
  writeState(which: FlatBuffer, offset: number, src: Float32Array): void {
    this[which].set(src, offset);
  }
  readState(which: FlatBuffer, offset: number, dst: Float32Array): void {
    dst.set(this[which].subarray(offset, offset + dst.length));
  }
  resetOptState(step: number): void {
    this.m.fill(0);
    this.v.fill(0);
    this.step = step;
  }
}

/** The check that names a tensor's first bad value as the flat buffers' checks always did: `${what}[name][i] is x: ${expected}`. */
function valueCheck(r: Reader, what: string, name: string, nonNegative: boolean, expected: string): ValueCheck {
  return { nonNegative, fail: (i, x) => r.fail(`${what}[${name}][${i}] is ${x}`, expected) };
}

const IGNORED_BUFFER = /^transformer\.h\.\d+\.attn\.(bias|masked_bias)$/; // nanoGPT's causal-mask buffers

function decodeModelState(r: Reader, value: PyValue | undefined, cfg: ModelCfg, sink: StateSink): void {
  const sd = r.dict(value, "model_state");
  const layout = paramLayout(cfg);
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
    r.streamTensor(t, p.shape, `model_state[${p.name}]`, (off, values) => sink.writeState("params", p.offset + off, values),
      valueCheck(r, "model_state", p.name, false, "expected finite weights (a diverged or corrupted checkpoint)"));
  }
  const head = get(TIED_LM_HEAD.name);
  if (head !== undefined) {
    const wte = get(TIED_LM_HEAD.tiedTo) as Tensor;
    const embedding = layout.find((p) => p.name === TIED_LM_HEAD.tiedTo)!;
    const where = `model_state[${TIED_LM_HEAD.name}]`;
    const t = r.checkTensor(head, [cfg.V, cfg.C], where);
    const shared = t.storage === wte.storage && t.storageOffset === wte.storageOffset && t.stride.every((s, i) => s === wte.stride[i]);
    if (!shared) {
      // Compare bit patterns with the embedding just decoded: equal values (NaN included) mean the same tied weight.
      let emb: Float32Array | null = null;
      let differs = false;
      r.streamTensor(t, [cfg.V, cfg.C], where, (off, values) => {
        if (differs) return;
        if (emb === null || emb.length < values.length) emb = new Float32Array(values.length);
        const e = emb.subarray(0, values.length);
        sink.readState("params", embedding.offset + off, e);
        const a = new Uint32Array(values.buffer, values.byteOffset, values.length);
        const b = new Uint32Array(e.buffer, e.byteOffset, e.length);
        differs = !a.every((x, i) => x === b[i]);
      });
      if (differs) {
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
}

/**
 * The optimizer's hyper-parameters and step, checked, and stream(sink): its moments
 * decoded into sink (written after resetOptState(step)).
 */
function decodeOptimizerState(r: Reader, value: PyValue | undefined, cfg: ModelCfg): { meta: OptMeta; stream(sink: StateSink): void } | null {
  if (value === null || value === undefined) return null;
  const opt = r.dict(value, "optimizer_state");
  const state = r.dict(opt.get("state"), "optimizer_state['state']");
  const groups = opt.get("param_groups");
  if (!Array.isArray(groups) || groups.length === 0) r.fail("optimizer_state['param_groups']", `is a ${pyTypeName(groups)}, expected a list of groups`);

  const layout = paramLayout(cfg);
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

  const meta = (step: number): OptMeta => ({ step, hparams, trainDefaults });
  if (state.size === 0) return { meta: meta(0), stream: (sink) => sink.resetOptState(0) };
  for (const k of state.keys()) {
    if (typeof k !== "number" || !specOf.has(k)) r.fail("optimizer_state['state']", `has an entry for parameter ${String(k)}, which no group lists`);
  }
  // The step first (one count for all tensors): the moments are then written under it.
  let step: number | null = null;
  const entries: Array<[PyDict, ParamSpec, string]> = [];
  for (const [idx, p] of specOf) {
    const where = `optimizer_state['state'][${idx}] (${p.name})`;
    const entry = state.get(idx);
    if (entry === undefined) r.fail("optimizer_state['state']", `has no entry for parameter ${idx} (${p.name}) while others have one`);
    const s = r.dict(entry, where);
    const st = r.float(s.get("step"), `${where}['step']`);
    if (!Number.isSafeInteger(st) || st < 0) r.fail(`${where}['step']`, `is ${st}, expected a whole number >= 0`);
    if (step !== null && st !== step) r.fail("optimizer_state['state']", `parameters are at different steps (${step} and ${st}); train keeps one step count`);
    step = st;
    entries.push([s, p, where]);
  }
  return {
    meta: meta(step ?? 0),
    stream(sink) {
      sink.resetOptState(step ?? 0);
      for (const [s, p, where] of entries) {
        r.streamTensor(s.get("exp_avg"), p.shape, `${where}['exp_avg']`, (off, values) => sink.writeState("m", p.offset + off, values),
          valueCheck(r, "optimizer_state exp_avg", p.name, false, "expected finite moments"));
        r.streamTensor(s.get("exp_avg_sq"), p.shape, `${where}['exp_avg_sq']`, (off, values) => sink.writeState("v", p.offset + off, values),
          valueCheck(r, "optimizer_state exp_avg_sq", p.name, true, "expected finite values >= 0 (squared gradients)"));
      }
    },
  };
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

/** AdamW's state without its moments (those went to a StateSink). */
export type OptMeta = Omit<OptState, "m" | "v">;

/** A checkpoint whose weights and moments were decoded into a StateSink (a native model's buffers). */
export interface LoadedCheckpoint extends Omit<Checkpoint, "params" | "opt"> {
  opt: OptMeta | null;
}

/** A checkpoint's head, checked, and what decodes its tensors afterwards. */
interface DecodedHead {
  head: LoadedCheckpoint;
  /** Decodes model_state (and with withOptimizer the moments) into sink. */
  stream(sink: StateSink): void;
}

/**
 * Everything of a torch.load result but its tensors, checked: model_cfg (against expected
 * on the shape keys, when given), train_cfg (options.accept sees both first), the
 * optimizer's hyper-parameters and step, step, best_val_loss. Reads data.pkl only.
 */
function decodeHead(value: PyValue, source: string, expected: ModelCfg | undefined, options: DecodeOptions, withOptimizer: boolean): DecodedHead {
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
  const hasOptimizer = value.get("optimizer_state") !== null && value.get("optimizer_state") !== undefined;
  const decodedBytes = 4 * numParamsOf(cfg) * (hasOptimizer ? 3 : 1);
  if (options.fileBytes !== undefined && decodedBytes > decodedBytesBudget(options.fileBytes)) {
    r.fail("model_cfg", `declares a model of ${numParamsOf(cfg)} parameters (${formatBytes(decodedBytes)} of float32 with its optimizer state), more than a file of ${options.fileBytes} bytes holds; the file is not a checkpoint of that model`);
  }
  const optimizer = decodeOptimizerState(r, value.get("optimizer_state"), cfg);
  const step = r.int(value.get("step"), "step");
  if (step < 0) r.fail("step", `is ${step}, expected >= 0`);
  const best = value.get("best_val_loss");
  const bestValLoss = best === undefined || best === null ? null : r.float(best, "best_val_loss");
  if (bestValLoss !== null && !(Number.isFinite(bestValLoss) && bestValLoss >= 0)) {
    r.fail("best_val_loss", `is ${bestValLoss}, expected a finite loss >= 0 or None`);
  }
  const head: LoadedCheckpoint = { modelCfg: cfg, trainCfg, opt: withOptimizer ? (optimizer?.meta ?? null) : null, step, bestValLoss };
  return {
    head,
    stream(sink) {
      decodeModelState(r, value.get("model_state"), cfg, sink);
      if (withOptimizer) optimizer?.stream(sink);
    },
  };
}

/**
 * The checkpoint in a torch.load result, its floats decoded into the sink that sinkFor gives
 * for its head (decodeHead; moments only when withOptimizer). Tensors are checked by name,
 * size and dtype against the checkpoint's own model_cfg. Weights and moments must be
 * finite, checked as they stream. Errors name source and the key; after one, the sink
 * holds part of the checkpoint.
 */
function decodeCheckpoint(
  value: PyValue,
  source: string,
  expected: ModelCfg | undefined,
  options: DecodeOptions,
  sinkFor: (head: LoadedCheckpoint, fail: (what: string, expected: string) => never) => StateSink,
  withOptimizer = true,
): LoadedCheckpoint {
  // Everything but the tensors first: the sink may depend on it (a resume's recorded defaults).
  const decoded = decodeHead(value, source, expected, options, withOptimizer);
  const r = new Reader(source);
  decoded.stream(sinkFor(decoded.head, (what, exp) => r.fail(what, exp)));
  return decoded.head;
}

/** The file size a checkpoint of cfg may have: its float32 weights and moments plus room for the pickle. */
export function maxCheckpointBytes(cfg: ModelCfg): number {
  return 3 * 4 * numParamsOf(cfg) + (64 << 20);
}

export interface LoadOptions {
  /** The largest file accepted (default: maxCheckpointBytes of expected, else the available memory). */
  maxBytes?: number;
  accept?: DecodeOptions["accept"];
}

/**
 * Reads and checks a checkpoint file (written by train or by torch.save) into whole arrays,
 * streaming it (the file is never held whole). With expected, a file larger than a
 * checkpoint of that model can be is refused before it is read.
 */
export function loadCheckpoint(path: string, expected?: ModelCfg, options: LoadOptions = {}): Checkpoint {
  const maxBytes = options.maxBytes ?? (expected ? maxCheckpointBytes(expected) : availableMemoryBytes());
  let arrays: ArraySink | null = null;
  const loaded = withTorchFile(path, maxBytes, true, (value, fileBytes) =>
    decodeCheckpoint(value, path, expected, { fileBytes, accept: options.accept }, (head) => (arrays = new ArraySink(numParams(head.modelCfg)))),
  );
  const a = arrays as unknown as ArraySink;
  return { ...loaded, params: a.params, opt: loaded.opt && { ...loaded.opt, m: a.m, v: a.v } };
}

/** A model to load a checkpoint into: its shape and its flat buffers (NativeModel). */
export interface LoadTarget extends StateSink {
  readonly cfg: ModelCfg;
}

export interface LoadIntoOptions extends LoadOptions {
  /** false: only the weights are read (the model's moments are left as they are; opt is null). */
  optimizer?: boolean;
}

/**
 * Reads and checks a checkpoint file straight into a model's buffers: its records stream
 * from the file in 1 MiB chunks, so neither the file nor the state is ever held whole
 * (issue 22: 1.5 GB at GPT-2 small). target may be a function that gets (opens) the model
 * once everything but the tensors is read and checked. The checkpoint's model must be the
 * model's shape (checked after options.accept). On failure the model holds part of the checkpoint.
 */
export function loadCheckpointInto(target: LoadTarget | ((head: LoadedCheckpoint) => LoadTarget), path: string, options: LoadIntoOptions = {}): LoadedCheckpoint {
  const maxBytes = options.maxBytes ?? (typeof target === "function" ? availableMemoryBytes() : maxCheckpointBytes(target.cfg));
  return withTorchFile(path, maxBytes, true, (value, fileBytes) =>
    decodeCheckpoint(value, path, undefined, { fileBytes, accept: options.accept }, (head, fail) => {
      const model = typeof target === "function" ? target(head) : target;
      const diff = modelCfgDifferences(head.modelCfg, model.cfg);
      if (diff.length > 0) fail("model_cfg", `differs from the model it is loaded into (checkpoint vs model: ${diff.join(", ")})`);
      return model;
    }, options.optimizer !== false),
  );
}

/**
 * What a checkpoint file says about itself (model_cfg, train_cfg, the optimizer's
 * hyper-parameters and recorded defaults, step, best_val_loss), checked as a load checks
 * them, without reading a tensor: data.pkl only (the hand-off between phases, `sample`).
 */
export function readCheckpointHead(path: string, options: LoadOptions = {}): LoadedCheckpoint {
  return withTorchFile(path, options.maxBytes ?? availableMemoryBytes(), false, (value, fileBytes) =>
    decodeHead(value, path, undefined, { fileBytes, accept: options.accept }, true).head,
  );
}

/** The phase (from train_cfg) of a checkpoint file, or null when train_cfg does not tell (reads data.pkl only). */
export function phaseOfCheckpointFile(path: string, expected?: ModelCfg): "pretrain" | "sft" | null {
  return withTorchFile(path, expected ? maxCheckpointBytes(expected) : availableMemoryBytes(), false, (value) => {
    const r = new Reader(path);
    const top = r.dict(value, "checkpoint");
    const trainCfg = top.get("train_cfg");
    if (trainCfg === undefined) return null;
    return phaseOfTrainCfg(r.json(trainCfg, "train_cfg"));
  });
}
