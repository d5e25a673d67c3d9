/**
 * The Python values a torch checkpoint holds, as JS values:
 *   None -> null, bool -> boolean, int -> number (bigint beyond 2^53), float -> number
 *   (PyFloat forces a float when writing), str -> string, list -> array,
 *   tuple -> PyTuple, dict / OrderedDict -> PyDict, tensor -> Tensor,
 *   a module global (e.g. torch.FloatStorage) -> PyGlobal.
 */
import { InputError } from "../errors.ts";

/** Errors about a checkpoint file's content or format; the message names the file. Exit 2. */
export class CheckpointError extends InputError {
  override name = "CheckpointError";
}

export type DType =
  | "float32"
  | "float64"
  | "float16"
  | "bfloat16"
  | "int64"
  | "int32"
  | "int16"
  | "int8"
  | "uint8"
  | "bool";

/** Element arrays of a storage; float16 / bfloat16 are kept as raw 16-bit patterns. */
export type StorageArray =
  | Float32Array
  | Float64Array
  | BigInt64Array
  | Int32Array
  | Int16Array
  | Int8Array
  | Uint8Array
  | Uint16Array;

interface DTypeInfo {
  storage: string; // torch storage class name used in the pickle
  itemsize: number;
  view(buffer: ArrayBufferLike, byteOffset: number, length: number): StorageArray;
}

export const DTYPES: Readonly<Record<DType, DTypeInfo>> = {
  float32: { storage: "FloatStorage", itemsize: 4, view: (b, o, n) => new Float32Array(b, o, n) },
  float64: { storage: "DoubleStorage", itemsize: 8, view: (b, o, n) => new Float64Array(b, o, n) },
  float16: { storage: "HalfStorage", itemsize: 2, view: (b, o, n) => new Uint16Array(b, o, n) },
  bfloat16: { storage: "BFloat16Storage", itemsize: 2, view: (b, o, n) => new Uint16Array(b, o, n) },
  int64: { storage: "LongStorage", itemsize: 8, view: (b, o, n) => new BigInt64Array(b, o, n) },
  int32: { storage: "IntStorage", itemsize: 4, view: (b, o, n) => new Int32Array(b, o, n) },
  int16: { storage: "ShortStorage", itemsize: 2, view: (b, o, n) => new Int16Array(b, o, n) },
  int8: { storage: "CharStorage", itemsize: 1, view: (b, o, n) => new Int8Array(b, o, n) },
  uint8: { storage: "ByteStorage", itemsize: 1, view: (b, o, n) => new Uint8Array(b, o, n) },
  bool: { storage: "BoolStorage", itemsize: 1, view: (b, o, n) => new Uint8Array(b, o, n) },
};

/** The dtype of a torch storage class name (FloatStorage -> float32), or undefined. */
export function dtypeOfStorageName(name: string): DType | undefined {
  for (const [dtype, info] of Object.entries(DTYPES)) if (info.storage === name) return dtype as DType;
  return undefined;
}

/** The array type each dtype must come with (float16/bfloat16/bool share 16/8-bit raw arrays). */
function arrayMatchesDType(data: StorageArray, dtype: DType): boolean {
  switch (dtype) {
    case "float32": return data instanceof Float32Array;
    case "float64": return data instanceof Float64Array;
    case "float16":
    case "bfloat16": return data instanceof Uint16Array;
    case "int64": return data instanceof BigInt64Array;
    case "int32": return data instanceof Int32Array;
    case "int16": return data instanceof Int16Array;
    case "int8": return data instanceof Int8Array;
    case "uint8":
    case "bool": return data instanceof Uint8Array;
  }
}

/**
 * Where the bytes of a storage not held in memory come from: a native buffer being saved,
 * a record of a checkpoint file being read. Files of GB size stream through these in chunks.
 */
export interface StorageSource {
  readonly numel: number;
  /**
   * The raw little-endian bytes [from, to) in order, in chunks of a multiple of the item size;
   * each chunk is valid only until the next one is taken (sources reuse one buffer).
   */
  chunks(from: number, to: number): Iterable<Uint8Array>;
}

/** One torch storage: a typed array of elements, or a source streaming them. Tensors sharing it share memory. */
export class Storage {
  private array: StorageArray | null;
  private readonly source: StorageSource | null;
  readonly numel: number;

  constructor(readonly dtype: DType, data: StorageArray | StorageSource) {
    if (ArrayBuffer.isView(data)) {
      if (!arrayMatchesDType(data, dtype)) {
        throw new TypeError(`storage of dtype ${dtype} cannot hold a ${data.constructor.name}`);
      }
      this.array = data;
      this.source = null;
      this.numel = data.length;
    } else {
      this.array = null;
      this.source = data;
      this.numel = data.numel;
    }
  }
  get byteLength(): number {
    return this.numel * DTYPES[this.dtype].itemsize;
  }
  /** The elements; a streamed storage is read into memory here, once. */
  get data(): StorageArray {
    if (this.array === null) {
      const bytes = new Uint8Array(this.byteLength);
      let at = 0;
      for (const chunk of this.source!.chunks(0, bytes.length)) {
        bytes.set(chunk, at);
        at += chunk.length;
      }
      this.array = DTYPES[this.dtype].view(bytes.buffer, 0, this.numel);
    }
    return this.array;
  }
  /** Bytes [from, to) in chunks (each valid until the next is taken), without reading the rest into memory. */
  chunks(from = 0, to = this.byteLength): Iterable<Uint8Array> {
    if (this.array === null) return this.source!.chunks(from, to);
    return [this.bytes().subarray(from, to)];
  }
  /** The raw little-endian bytes (a view, no copy; a streamed storage is read into memory first). */
  bytes(): Uint8Array {
    const data = this.data;
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }
}

export function contiguousStrides(shape: readonly number[]): number[] {
  const stride = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    stride[i] = s;
    s *= shape[i]!;
  }
  return stride;
}

function describe(shape: readonly number[]): string {
  return `(${shape.join(", ")}${shape.length === 1 ? "," : ""})`;
}

/** A strided view of a storage, as torch.Tensor (CPU, no autograd state). */
export class Tensor {
  readonly shape: readonly number[];
  readonly stride: readonly number[];

  constructor(
    readonly storage: Storage,
    shape: readonly number[],
    stride: readonly number[] = contiguousStrides(shape),
    readonly storageOffset = 0,
    readonly requiresGrad = false,
  ) {
    if (stride.length !== shape.length) {
      throw new RangeError(`tensor size ${describe(shape)} and stride ${describe(stride)} differ in length`);
    }
    for (const v of [...shape, ...stride, storageOffset]) {
      if (!Number.isSafeInteger(v) || v < 0) {
        throw new RangeError(`tensor size ${describe(shape)}, stride ${describe(stride)}, offset ${storageOffset}: expected non-negative integers`);
      }
    }
    // The largest element index must lie inside the storage (empty tensors need nothing).
    if (!shape.includes(0)) {
      let last = storageOffset;
      for (let i = 0; i < shape.length; i++) last += (shape[i]! - 1) * stride[i]!;
      if (last >= storage.numel) {
        throw new RangeError(
          `tensor size ${describe(shape)}, stride ${describe(stride)}, offset ${storageOffset} reaches element ${last} of a storage of ${storage.numel} elements`,
        );
      }
    }
    this.shape = Object.freeze([...shape]);
    this.stride = Object.freeze([...stride]);
  }

  /** A contiguous tensor owning (not copying) data. */
  static of(data: StorageArray, shape: readonly number[], dtype?: DType): Tensor {
    const dt = dtype ?? defaultDType(data);
    const numel = shape.reduce((a, b) => a * b, 1);
    if (numel !== data.length) {
      throw new RangeError(`tensor of size ${describe(shape)} needs ${numel} elements, got ${data.length}`);
    }
    return new Tensor(new Storage(dt, data), shape);
  }

  get dtype(): DType {
    return this.storage.dtype;
  }
  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }
  isContiguous(): boolean {
    const expected = contiguousStrides(this.shape);
    // Strides of size-1 dimensions do not matter (torch's definition).
    return this.shape.every((n, i) => n === 1 || this.stride[i] === expected[i]);
  }
  /** The elements in row-major order: a view when contiguous, else a copy. */
  contiguousData(): StorageArray {
    const n = this.numel;
    const src = this.storage.data;
    if (this.isContiguous()) return src.subarray(this.storageOffset, this.storageOffset + n) as StorageArray;
    const out = new (src.constructor as new (n: number) => StorageArray)(n);
    const idx = new Array<number>(this.shape.length).fill(0);
    for (let k = 0; k < n; k++) {
      let off = this.storageOffset;
      for (let d = 0; d < idx.length; d++) off += idx[d]! * this.stride[d]!;
      (out as unknown as Array<number | bigint>)[k] = (src as unknown as Array<number | bigint>)[off]!;
      for (let d = idx.length - 1; d >= 0; d--) {
        if (++idx[d]! < this.shape[d]!) break;
        idx[d] = 0;
      }
    }
    return out;
  }
  /** Elements as float32 in row-major order (float16/bfloat16 widened exactly, float64 rounded). */
  toFloat32(): Float32Array {
    const data = this.contiguousData();
    switch (this.dtype) {
      case "float32":
        return data as Float32Array;
      case "float16":
      case "bfloat16": {
        const out = new Float32Array(data.length);
        widen16(this.dtype, data as Uint16Array, out);
        return out;
      }
      case "int64":
        return Float32Array.from(data as BigInt64Array, (x) => Number(x));
      default:
        return Float32Array.from(data as ArrayLike<number>);
    }
  }
  toString(): string {
    return `tensor(${this.dtype}, size ${describe(this.shape)})`;
  }
}

function defaultDType(data: StorageArray): DType {
  if (data instanceof Float32Array) return "float32";
  if (data instanceof Float64Array) return "float64";
  if (data instanceof BigInt64Array) return "int64";
  if (data instanceof Int32Array) return "int32";
  if (data instanceof Int16Array) return "int16";
  if (data instanceof Int8Array) return "int8";
  if (data instanceof Uint8Array) return "uint8";
  throw new TypeError("a Uint16Array is ambiguous: give dtype float16 or bfloat16");
}

/** float16 / bfloat16 bit patterns widened (exactly) into out[0, bits.length). */
export function widen16(dtype: "float16" | "bfloat16", bits: Uint16Array, out: Float32Array): void {
  if (dtype === "float16") {
    for (let i = 0; i < bits.length; i++) out[i] = halfToFloat(bits[i]!);
  } else {
    const u = new Uint32Array(out.buffer, out.byteOffset, bits.length);
    for (let i = 0; i < bits.length; i++) u[i] = bits[i]! << 16;
  }
}

function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** A Python tuple (kept apart from lists, which are JS arrays). */
export class PyTuple {
  readonly items: readonly PyValue[];
  constructor(items: readonly PyValue[]) {
    this.items = Object.freeze([...items]);
  }
}

/** A number to be written as a Python float even when it is integral (e.g. 2.0). */
export class PyFloat {
  constructor(readonly value: number) {}
}

/** A module-level Python object referenced by name (a class or function). */
export class PyGlobal {
  constructor(readonly module: string, readonly name: string) {}
  get qualified(): string {
    return `${this.module}.${this.name}`;
  }
}

export type PyKey = string | number | bigint | boolean | null;

/** dict or collections.OrderedDict, keys in insertion order. */
export class PyDict {
  readonly map = new Map<PyKey, PyValue>();
  /** Instance attributes set by pickle BUILD (e.g. a state dict's _metadata). */
  attrs: PyDict | null = null;
  constructor(readonly ordered = false, entries?: Iterable<readonly [PyKey, PyValue]>) {
    if (entries) for (const [k, v] of entries) this.map.set(k, v);
  }
  get(key: PyKey): PyValue | undefined {
    return this.map.get(key);
  }
  has(key: PyKey): boolean {
    return this.map.has(key);
  }
  set(key: PyKey, value: PyValue): this {
    this.map.set(key, value);
    return this;
  }
  get size(): number {
    return this.map.size;
  }
  keys(): IterableIterator<PyKey> {
    return this.map.keys();
  }
  entries(): IterableIterator<[PyKey, PyValue]> {
    return this.map.entries();
  }
}

export type PyValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | PyFloat
  | PyTuple
  | PyDict
  | PyGlobal
  | Tensor
  | Storage // a bare torch storage (tensors hold theirs)
  | Uint8Array // bytes
  | PyValue[];

/** What the writer accepts: PyValue, plus plain objects as dicts with string keys. */
export type PyInput = PyValue | PyInput[] | { readonly [key: string]: PyInput };

/** A Python-like name for the type of a value, for messages. */
export function pyTypeName(v: PyValue | undefined): string {
  if (v === undefined) return "nothing";
  if (v === null) return "None";
  if (typeof v === "boolean") return "bool";
  if (typeof v === "bigint") return "int";
  if (typeof v === "number") return Number.isInteger(v) ? "int" : "float";
  if (typeof v === "string") return "str";
  if (v instanceof PyFloat) return "float";
  if (v instanceof PyTuple) return "tuple";
  if (v instanceof PyDict) return v.ordered ? "OrderedDict" : "dict";
  if (v instanceof PyGlobal) return v.qualified;
  if (v instanceof Tensor) return `${v}`;
  if (v instanceof Storage) return `${v.dtype} storage`;
  if (v instanceof Uint8Array) return "bytes";
  return "list";
}
