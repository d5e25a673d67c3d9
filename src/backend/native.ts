/**
 * The bun:ffi binding of the native library (native/include/gpt.h).
 * NativeModel owns one gpt_t handle; every failing call throws NativeError with the
 * library's own message.
 */
import { dlopen, FFIType, type Pointer } from "bun:ffi";
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { homedir } from "node:os";
import { basename, join } from "node:path";
import type { ModelCfg } from "../model/config.ts";

export type Device = "cpu" | "mps";

export interface HParams {
  lr: number;
  weightDecay: number;
  beta1: number;
  beta2: number;
  eps: number;
  gradClip: number; // <= 0 disables clipping
}

export interface StepResult {
  loss: number;
  gradNorm: number; // before clipping
  applied: boolean; // false: loss or grad norm not finite, nothing was updated
  nTargets: number;
}

export class NativeError extends Error {
  override name = "NativeError";
}

/**
 * Settings of one native model (gpt_options of native/include/gpt.h). None changes
 * results; they trade memory, time or (MPS gather) run-to-run bits.
 */
export interface NativeOptions {
  profile: boolean; // per-op seconds from profileReport()
  recompute: "auto" | "always" | "never"; // CPU: GELU outputs and attention probabilities in backward
  headChunkRows: number; // CPU: LM head rows per chunk of logits, 0 = about 16 MB
  lanes: "auto" | "one" | "all"; // CPU: batch-parallel lanes (see gpt_set_threads in gpt.h)
  laneHelp: "on" | "off" | "test"; // CPU: a lane that is done helps the others
  mpsEmbedding: "onehot" | "gather"; // MPS: token embedding by one-hot matmul or gather
}

/**
 * The options from environment variables, the one place they are read: GPT_PROFILE=1,
 * GPT_RECOMPUTE=1|0 (always | never), GPT_HEAD_CHUNK_ROWS=n, GPT_LANES=1|all,
 * GPT_LANE_HELP=0|test, GPT_MPS_EMBEDDING=onehot|gather; anything else is the default.
 */
export function nativeOptions(env: Record<string, string | undefined> = process.env): NativeOptions {
  const chunk = Number.parseInt(env.GPT_HEAD_CHUNK_ROWS ?? "", 10);
  const embedding = env.GPT_MPS_EMBEDDING ?? "";
  if (!["", "onehot", "gather"].includes(embedding)) {
    throw new NativeError(`GPT_MPS_EMBEDDING = "${embedding}", expected "onehot" (default) or "gather"`);
  }
  return {
    profile: env.GPT_PROFILE === "1",
    recompute: env.GPT_RECOMPUTE === "1" ? "always" : env.GPT_RECOMPUTE === "0" ? "never" : "auto",
    headChunkRows: chunk > 0 ? chunk : 0,
    lanes: env.GPT_LANES === "1" ? "one" : env.GPT_LANES === "all" ? "all" : "auto",
    laneHelp: env.GPT_LANE_HELP === "0" ? "off" : env.GPT_LANE_HELP === "test" ? "test" : "on",
    mpsEmbedding: embedding === "gather" ? "gather" : "onehot",
  };
}

/** gpt_options in field order; each enum's values as gpt.h numbers them. */
function optionsStruct(o: NativeOptions): Int32Array {
  return Int32Array.of(
    o.profile ? 1 : 0,
    ["auto", "always", "never"].indexOf(o.recompute),
    o.headChunkRows,
    ["auto", "one", "all"].indexOf(o.lanes),
    ["on", "off", "test"].indexOf(o.laneHelp),
    ["onehot", "gather"].indexOf(o.mpsEmbedding),
  );
}

const { ptr, i32, i64, cstring, void: none } = FFIType;

const SYMBOLS = {
  gpt_device_available: { args: [i32], returns: i32 },
  gpt_num_params: { args: [ptr], returns: i64 },
  gpt_create: { args: [ptr, i32, i32, ptr, ptr, i32], returns: ptr },
  gpt_free: { args: [ptr], returns: none },
  gpt_last_error: { args: [ptr], returns: cstring },
  gpt_set_threads: { args: [ptr, i32], returns: i32 },
  gpt_set_params: { args: [ptr, ptr], returns: i32 },
  gpt_get_params: { args: [ptr, ptr], returns: i32 },
  gpt_set_opt_state: { args: [ptr, ptr, ptr, i64], returns: i32 },
  gpt_get_opt_state: { args: [ptr, ptr, ptr, ptr], returns: i32 },
  gpt_read_state: { args: [ptr, i32, i64, i64, ptr], returns: i32 },
  gpt_write_state: { args: [ptr, i32, i64, i64, ptr], returns: i32 },
  gpt_train_step: { args: [ptr, ptr, ptr, ptr, ptr], returns: i32 },
  gpt_eval_loss: { args: [ptr, ptr, ptr, ptr], returns: i32 },
  gpt_compute_grads: { args: [ptr, ptr, ptr, ptr, ptr], returns: i32 },
  gpt_profile_report: { args: [ptr, ptr, i32], returns: i32 },
  gpt_check_limits: { args: [ptr, i32, i32, ptr, ptr, i32], returns: i32 },
  gpt_decode_begin: { args: [ptr, ptr, i32, ptr, i32], returns: i32 },
  gpt_decode_step: { args: [ptr, i32, ptr], returns: i32 },
} as const;

export type NativeLibrary = ReturnType<typeof dlopen<typeof SYMBOLS>>["symbols"];

/** Where `bun scripts/build-native.ts` puts the library in a checkout. */
export function defaultLibraryPath(): string {
  const file = process.platform === "darwin" ? "libgpt.dylib" : "libgpt.so";
  return join(import.meta.dir, "..", "..", "native", "build", file);
}

/**
 * Opens the library. An embedded copy (a /$bunfs path inside the compiled executable) is
 * extracted by Bun to its temp folder; if that fails (a noexec /tmp, say), we copy it
 * into a cache folder of our own, named by content hash, and open that.
 */
export function openLibrary(path: string = defaultLibraryPath()): NativeLibrary {
  try {
    return dlopen(path, SYMBOLS).symbols;
  } catch (e) {
    if (path.startsWith("/$bunfs/") || path.startsWith("B:/~BUN/")) {
      try {
        return dlopen(cachedCopy(path), SYMBOLS).symbols;
      } catch (e2) {
        e = e2;
      }
    }
    throw new NativeError(
      `cannot load the native library ${path}: ${(e as Error).message} (build it with: bun scripts/build-native.ts)`,
    );
  }
}

function cachedCopy(embedded: string): string {
  const bytes = readFileSync(embedded);
  const base =
    process.env.XDG_CACHE_HOME ?? join(homedir(), process.platform === "darwin" ? "Library/Caches" : ".cache");
  const dir = join(base, "train");
  const file = join(dir, `${Bun.hash(bytes).toString(16)}-${basename(embedded)}`);
  if (!existsSync(file)) {
    mkdirSync(dir, { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    writeFileSync(tmp, bytes, { mode: 0o755 });
    renameSync(tmp, file);
  }
  return file;
}

export function deviceAvailable(device: Device, lib: NativeLibrary = openLibrary()): boolean {
  return lib.gpt_device_available(device === "mps" ? 1 : 0) === 1;
}

function cfgStruct(cfg: ModelCfg): Int32Array {
  return Int32Array.of(cfg.V, cfg.T, cfg.C, cfg.L, cfg.H, cfg.d_ff);
}

/** A device's tensor size limits (gpt_limits of gpt.h); 0: no such limit. */
export interface DeviceLimits {
  maxTensorElements: number;
  maxTensorBytes: number;
  maxBufferBytes: number;
}

/**
 * null when every tensor a model of (cfg, B) makes on `device` fits the device's limits
 * (`limits`, or this machine's device's own), else the library's message naming the
 * largest tensor, its shape and size, and the limit (gpt_check_limits of gpt.h).
 * Throws NativeError for an invalid cfg or B, or a device this machine lacks.
 */
export function tensorLimitProblem(
  cfg: ModelCfg,
  batchSize: number,
  device: Device,
  lib: NativeLibrary = openLibrary(),
  limits?: DeviceLimits,
): string | null {
  const err = new Uint8Array(1024);
  const lim = limits && BigInt64Array.from([limits.maxTensorElements, limits.maxTensorBytes, limits.maxBufferBytes].map(BigInt));
  const status = lib.gpt_check_limits(cfgStruct(cfg), batchSize, device === "mps" ? 1 : 0, lim ?? null, err, err.length);
  const end = err.indexOf(0);
  const message = new TextDecoder().decode(err.subarray(0, end < 0 ? err.length : end));
  if (status === 0) return null;
  if (status === 1) return message;
  throw new NativeError(message || "gpt_check_limits failed");
}

/** The model's flat float32 buffers (GPT_STATE_* of gpt.h): the parameters and AdamW's two moments. */
export type StateBuffer = "params" | "m" | "v";
const STATE_BUFFER_IDS: Record<StateBuffer, number> = { params: 0, m: 1, v: 2 };

export class NativeModel {
  readonly numParams: number;
  private handle: Pointer | null;
  // Reused argument buffers: no allocation per step on the TS side either.
  private readonly hparams = new Float32Array(6);
  private readonly result = new ArrayBuffer(16);
  private readonly resultBytes = new Uint8Array(this.result);
  private readonly resultF32 = new Float32Array(this.result, 0, 2);
  private readonly resultI32 = new Int32Array(this.result, 8, 2);
  private readonly scalar = new Float32Array(1);

  private constructor(
    private readonly lib: NativeLibrary,
    handle: Pointer,
    readonly cfg: ModelCfg,
    readonly batchSize: number,
  ) {
    this.handle = handle;
    this.numParams = Number(lib.gpt_num_params(cfgStruct(cfg)));
  }

  static open(
    cfg: ModelCfg,
    batchSize: number,
    device: Device = "cpu",
    lib: NativeLibrary = openLibrary(),
    options: NativeOptions = nativeOptions(),
  ): NativeModel {
    const err = new Uint8Array(1024);
    const opts = optionsStruct(options);
    const handle = lib.gpt_create(cfgStruct(cfg), batchSize, device === "mps" ? 1 : 0, opts, err, err.length);
    if (!handle || typeof handle === "bigint") {
      const end = err.indexOf(0);
      throw new NativeError(new TextDecoder().decode(err.subarray(0, end < 0 ? err.length : end)) || "gpt_create failed");
    }
    return new NativeModel(lib, handle, cfg, batchSize);
  }

  private get h(): Pointer {
    if (this.handle === null) throw new NativeError("the native model was already closed");
    return this.handle;
  }

  private check(status: number): void {
    if (status !== 0) throw new NativeError(String(this.lib.gpt_last_error(this.h)));
  }

  private checkTokens(x: Int32Array, y?: Int32Array): void {
    const n = this.batchSize * this.cfg.T;
    if (x.length !== n || (y !== undefined && y.length !== n)) {
      throw new NativeError(`token buffers must hold B*T = ${n} ids, got ${x.length} and ${y?.length}`);
    }
  }

  setThreads(n: number): void {
    this.check(this.lib.gpt_set_threads(this.h, n));
  }

  setParams(params: Float32Array): void {
    if (params.length !== this.numParams) throw new NativeError(`expected ${this.numParams} parameters, got ${params.length}`);
    this.check(this.lib.gpt_set_params(this.h, params));
  }

  getParams(out: Float32Array = new Float32Array(this.numParams)): Float32Array {
    this.check(this.lib.gpt_get_params(this.h, out));
    return out;
  }

  /** m and v null with step 0: a fresh optimizer. */
  setOptState(m: Float32Array | null, v: Float32Array | null, step: number): void {
    for (const a of [m, v]) {
      if (a !== null && a.length !== this.numParams) throw new NativeError(`optimizer state must hold ${this.numParams} floats, got ${a.length}`);
    }
    this.check(this.lib.gpt_set_opt_state(this.h, m, v, step));
  }

  getOptState(): { m: Float32Array; v: Float32Array; step: number } {
    const m = new Float32Array(this.numParams);
    const v = new Float32Array(this.numParams);
    const step = new BigInt64Array(1);
    this.check(this.lib.gpt_get_opt_state(this.h, m, v, step));
    return { m, v, step: Number(step[0]) };
  }

  /** The optimizer's step count alone (no copy of the moments). */
  optStep(): number {
    const step = new BigInt64Array(1);
    this.check(this.lib.gpt_get_opt_state(this.h, null, null, step));
    return Number(step[0]);
  }

  /** Zero moments at step `step` (a fresh optimizer at 0; or moments written next with writeState). */
  resetOptState(step: number): void {
    this.check(this.lib.gpt_set_opt_state(this.h, null, null, step));
  }

  /** Copies dst.length floats of one buffer from element offset into dst (checkpoint I/O in bounded memory). */
  readState(which: StateBuffer, offset: number, dst: Float32Array): void {
    this.check(this.lib.gpt_read_state(this.h, STATE_BUFFER_IDS[which], offset, dst.length, dst));
  }

  /** Copies src over src.length floats of one buffer from element offset. */
  writeState(which: StateBuffer, offset: number, src: Float32Array): void {
    this.check(this.lib.gpt_write_state(this.h, STATE_BUFFER_IDS[which], offset, src.length, src));
  }

  trainStep(x: Int32Array, y: Int32Array, h: HParams): StepResult {
    this.checkTokens(x, y);
    this.hparams.set([h.lr, h.weightDecay, h.beta1, h.beta2, h.eps, h.gradClip]);
    this.check(this.lib.gpt_train_step(this.h, x, y, this.hparams, this.resultBytes));
    return {
      loss: this.resultF32[0]!,
      gradNorm: this.resultF32[1]!,
      applied: this.resultI32[0] === 1,
      nTargets: this.resultI32[1]!,
    };
  }

  evalLoss(x: Int32Array, y: Int32Array): number {
    this.checkTokens(x, y);
    this.check(this.lib.gpt_eval_loss(this.h, x, y, this.scalar));
    return this.scalar[0]!;
  }

  computeGrads(x: Int32Array, y: Int32Array): { loss: number; grads: Float32Array } {
    this.checkTokens(x, y);
    const grads = new Float32Array(this.numParams);
    this.check(this.lib.gpt_compute_grads(this.h, x, y, this.scalar, grads));
    return { loss: this.scalar[0]!, grads };
  }

  /**
   * The prompt pass of incremental decoding (gpt_decode_begin): tokens from position 0,
   * 1 to T of them. Writes the last position's logits into `logits` (V floats), or every
   * position's with all (n * V floats).
   */
  decodeBegin(tokens: Int32Array, logits: Float32Array, all = false): void {
    const want = (all ? tokens.length : 1) * this.cfg.V;
    if (logits.length < want) throw new NativeError(`the logits buffer holds ${logits.length} floats, expected ${want}`);
    this.check(this.lib.gpt_decode_begin(this.h, tokens, tokens.length, logits, all ? 1 : 0));
  }

  /** One token at the next position (gpt_decode_step): its logits into `logits` (V floats). */
  decodeStep(token: number, logits: Float32Array): void {
    if (logits.length < this.cfg.V) throw new NativeError(`the logits buffer holds ${logits.length} floats, expected ${this.cfg.V}`);
    this.check(this.lib.gpt_decode_step(this.h, token, logits));
  }

  profileReport(): string {
    const buf = new Uint8Array(1 << 16);
    const n = this.lib.gpt_profile_report(this.h, buf, buf.length);
    return new TextDecoder().decode(buf.subarray(0, Math.max(0, n)));
  }

  close(): void {
    if (this.handle !== null) this.lib.gpt_free(this.handle);
    this.handle = null;
  }
}
