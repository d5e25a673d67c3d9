/**
 * Python pickle, the subset torch.save uses: a writer that emits protocol 2 the way
 * CPython's pickler does (same opcodes, memo and batching), and a reader of protocols
 * 2-5 restricted to plain data and the globals a caller allows (no code is run).
 */
import { CheckpointError, PyDict, PyFloat, PyGlobal, PyTuple, Tensor, pyTypeName } from "./pyvalue.ts";
import type { PyInput, PyKey, PyValue } from "./pyvalue.ts";
import { MAX_INT_BYTES } from "./budget.ts";

const OP = {
  MARK: 0x28, // (
  STOP: 0x2e, // .
  POP: 0x30, // 0
  POP_MARK: 0x31, // 1
  DUP: 0x32, // 2
  FLOAT: 0x46, // F
  INT: 0x49, // I
  BININT: 0x4a, // J
  BININT1: 0x4b, // K
  LONG: 0x4c, // L
  BININT2: 0x4d, // M
  NONE: 0x4e, // N
  BINPERSID: 0x51, // Q
  REDUCE: 0x52, // R
  STRING: 0x53, // S
  BINSTRING: 0x54, // T
  SHORT_BINSTRING: 0x55, // U
  UNICODE: 0x56, // V
  BINUNICODE: 0x58, // X
  APPEND: 0x61, // a
  BUILD: 0x62, // b
  GLOBAL: 0x63, // c
  DICT: 0x64, // d
  EMPTY_DICT: 0x7d, // }
  APPENDS: 0x65, // e
  GET: 0x67, // g
  BINGET: 0x68, // h
  LONG_BINGET: 0x6a, // j
  LIST: 0x6c, // l
  EMPTY_LIST: 0x5d, // ]
  PUT: 0x70, // p
  BINPUT: 0x71, // q
  LONG_BINPUT: 0x72, // r
  SETITEM: 0x73, // s
  TUPLE: 0x74, // t
  EMPTY_TUPLE: 0x29, // )
  SETITEMS: 0x75, // u
  BINFLOAT: 0x47, // G
  PROTO: 0x80,
  NEWOBJ: 0x81,
  TUPLE1: 0x85,
  TUPLE2: 0x86,
  TUPLE3: 0x87,
  NEWTRUE: 0x88,
  NEWFALSE: 0x89,
  LONG1: 0x8a,
  LONG4: 0x8b,
  BINBYTES: 0x42, // B
  SHORT_BINBYTES: 0x43, // C
  SHORT_BINUNICODE: 0x8c,
  BINUNICODE8: 0x8d,
  BINBYTES8: 0x8e,
  STACK_GLOBAL: 0x93,
  MEMOIZE: 0x94,
  FRAME: 0x95,
} as const;

const BATCHSIZE = 1000; // CPython's batch of SETITEMS / APPENDS

// ---------------------------------------------------------------------------------
// Integers as pickle LONG: little-endian two's complement, shortest form (CPython's encode_long)

export function encodeLong(x: bigint): Uint8Array {
  if (x === 0n) return new Uint8Array(0);
  const bytes: number[] = [];
  let v = x;
  // Emit bytes until the remaining value is all sign bits and the sign bit of the last byte matches.
  for (;;) {
    const b = Number(v & 0xffn);
    bytes.push(b);
    v >>= 8n;
    if ((v === 0n && (b & 0x80) === 0) || (v === -1n && (b & 0x80) !== 0)) break;
  }
  return Uint8Array.from(bytes);
}

/** Linear time: one hex string, one BigInt (shifting a growing BigInt byte by byte is quadratic). */
export function decodeLong(bytes: Uint8Array): bigint {
  if (bytes.length === 0) return 0n;
  let hex = "";
  for (let i = bytes.length - 1; i >= 0; i--) hex += HEX_BYTE[bytes[i]!];
  let v = BigInt(`0x${hex}`);
  if (bytes[bytes.length - 1]! & 0x80) v -= 1n << BigInt(8 * bytes.length);
  return v;
}

const HEX_BYTE = Array.from({ length: 256 }, (_, b) => b.toString(16).padStart(2, "0"));

/** A Python int as a JS number when exact, else a bigint. */
function intValue(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

// ---------------------------------------------------------------------------------
// Writer

class ByteWriter {
  private buf = new Uint8Array(1 << 12);
  private view = new DataView(this.buf.buffer);
  length = 0;
  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.length + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u8(v: number): void {
    this.reserve(1);
    this.buf[this.length++] = v;
  }
  u16(v: number): void {
    this.reserve(2);
    this.view.setUint16(this.length, v, true);
    this.length += 2;
  }
  u32(v: number): void {
    this.reserve(4);
    this.view.setUint32(this.length, v, true);
    this.length += 4;
  }
  i32(v: number): void {
    this.reserve(4);
    this.view.setInt32(this.length, v, true);
    this.length += 4;
  }
  f64be(v: number): void {
    this.reserve(8);
    this.view.setFloat64(this.length, v, false);
    this.length += 8;
  }
  bytes(b: Uint8Array): void {
    this.reserve(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }
  result(): Uint8Array {
    return this.buf.slice(0, this.length);
  }
}

/** How the writer turns objects it does not know natively into pickle. */
export interface PickleHooks {
  /** A persistent id for obj (pickled with BINPERSID), or undefined to pickle obj itself. */
  persistentId?(obj: unknown): PyInput | undefined;
  /** obj as a call func(*args) (pickled with REDUCE), or undefined. */
  reduce?(obj: unknown): { func: PyGlobal; args: unknown[] } | undefined;
}

const encoder = new TextEncoder();

class Pickler {
  private readonly out = new ByteWriter();
  private readonly memo = new Map<unknown, number>(); // objects by identity, strings and globals by value
  private nextMemo = 0;
  constructor(private readonly hooks: PickleHooks) {}

  dump(value: unknown): Uint8Array {
    this.out.u8(OP.PROTO);
    this.out.u8(2);
    this.save(value);
    this.out.u8(OP.STOP);
    return this.out.result();
  }

  private memoize(key: unknown): void {
    const idx = this.nextMemo++;
    this.memo.set(key, idx);
    if (idx < 256) {
      this.out.u8(OP.BINPUT);
      this.out.u8(idx);
    } else {
      this.out.u8(OP.LONG_BINPUT);
      this.out.u32(idx);
    }
  }

  /** Emits a memo GET for key if it was memoized; returns whether it did. */
  private getMemo(key: unknown): boolean {
    const idx = this.memo.get(key);
    if (idx === undefined) return false;
    if (idx < 256) {
      this.out.u8(OP.BINGET);
      this.out.u8(idx);
    } else {
      this.out.u8(OP.LONG_BINGET);
      this.out.u32(idx);
    }
    return true;
  }

  private save(v: unknown): void {
    const pid = this.hooks.persistentId?.(v);
    if (pid !== undefined) {
      this.save(pid);
      this.out.u8(OP.BINPERSID);
      return;
    }
    if (v === null) return this.out.u8(OP.NONE);
    if (v === true) return this.out.u8(OP.NEWTRUE);
    if (v === false) return this.out.u8(OP.NEWFALSE);
    if (typeof v === "number") {
      if (Number.isSafeInteger(v) && !Object.is(v, -0)) return this.saveInt(BigInt(v));
      return this.saveFloat(v);
    }
    if (typeof v === "bigint") return this.saveInt(v);
    if (v instanceof PyFloat) return this.saveFloat(v.value);
    if (typeof v === "string") return this.saveStr(v);
    if (v instanceof PyGlobal) return this.saveGlobal(v);
    if (typeof v !== "object" || v === undefined) {
      throw new TypeError(`cannot pickle a ${typeof v}`);
    }
    if (this.getMemo(v)) return;
    if (v instanceof PyTuple) return this.saveTuple(v);
    if (Array.isArray(v)) return this.saveList(v);
    if (v instanceof PyDict) return v.ordered ? this.saveOrderedDict(v) : this.saveDict(v, v.entries());
    if (v instanceof Uint8Array) return this.saveBytes(v);
    const reduced = this.hooks.reduce?.(v);
    if (reduced) {
      this.saveGlobal(reduced.func);
      this.saveTupleItems(reduced.args, null);
      this.out.u8(OP.REDUCE);
      this.memoize(v);
      return;
    }
    if (v instanceof Tensor) throw new TypeError(`cannot pickle ${v} without a tensor hook`);
    if (Object.getPrototypeOf(v) === Object.prototype) {
      return this.saveDict(v, Object.entries(v as Record<string, unknown>));
    }
    throw new TypeError(`cannot pickle a ${(v as object).constructor?.name ?? "object"}`);
  }

  private saveInt(x: bigint): void {
    if (x >= 0n && x <= 0xffn) {
      this.out.u8(OP.BININT1);
      this.out.u8(Number(x));
    } else if (x >= 0n && x <= 0xffffn) {
      this.out.u8(OP.BININT2);
      this.out.u16(Number(x));
    } else if (x >= -0x80000000n && x <= 0x7fffffffn) {
      this.out.u8(OP.BININT);
      this.out.i32(Number(x));
    } else {
      const enc = encodeLong(x);
      if (enc.length < 256) {
        this.out.u8(OP.LONG1);
        this.out.u8(enc.length);
      } else {
        this.out.u8(OP.LONG4);
        this.out.u32(enc.length);
      }
      this.out.bytes(enc);
    }
  }

  private saveFloat(x: number): void {
    this.out.u8(OP.BINFLOAT);
    this.out.f64be(x);
  }

  private saveStr(s: string): void {
    const key = `s:${s}`;
    if (this.getMemo(key)) return;
    const enc = encoder.encode(s);
    this.out.u8(OP.BINUNICODE);
    this.out.u32(enc.length);
    this.out.bytes(enc);
    this.memoize(key);
  }

  private saveGlobal(g: PyGlobal): void {
    const key = `g:${g.qualified}`;
    if (this.getMemo(key)) return;
    this.out.u8(OP.GLOBAL);
    this.out.bytes(encoder.encode(`${g.module}\n${g.name}\n`));
    this.memoize(key);
  }

  private saveBytes(b: Uint8Array): void {
    // Protocol 2 has no bytes opcode: CPython writes _codecs.encode(latin-1 str, 'latin1').
    if (b.length === 0) {
      this.saveGlobal(new PyGlobal("__builtin__", "bytes"));
      this.out.u8(OP.EMPTY_TUPLE);
    } else {
      this.saveGlobal(new PyGlobal("_codecs", "encode"));
      this.saveTupleItems([String.fromCharCode(...b), "latin1"], null);
    }
    this.out.u8(OP.REDUCE);
    this.memoize(b);
  }

  private saveTuple(t: PyTuple): void {
    this.saveTupleItems(t.items, t);
  }

  private saveTupleItems(items: readonly unknown[], identity: object | null): void {
    if (items.length === 0) {
      this.out.u8(OP.EMPTY_TUPLE);
      return;
    }
    if (items.length <= 3) {
      for (const it of items) this.save(it);
      this.out.u8([OP.TUPLE1, OP.TUPLE2, OP.TUPLE3][items.length - 1]!);
    } else {
      this.out.u8(OP.MARK);
      for (const it of items) this.save(it);
      this.out.u8(OP.TUPLE);
    }
    this.memoize(identity ?? {});
  }

  private saveList(list: readonly unknown[]): void {
    this.out.u8(OP.EMPTY_LIST);
    this.memoize(list);
    for (let i = 0; i < list.length; i += BATCHSIZE) {
      const batch = list.slice(i, i + BATCHSIZE);
      if (batch.length === 1) {
        this.save(batch[0]);
        this.out.u8(OP.APPEND);
      } else {
        this.out.u8(OP.MARK);
        for (const it of batch) this.save(it);
        this.out.u8(OP.APPENDS);
      }
    }
  }

  private saveDict(identity: object, entries: Iterable<readonly [unknown, unknown]>): void {
    this.out.u8(OP.EMPTY_DICT);
    this.memoize(identity);
    this.saveItems(entries);
  }

  /** collections.OrderedDict as CPython reduces it: OrderedDict() then SETITEMS, then BUILD of attrs. */
  private saveOrderedDict(d: PyDict): void {
    this.saveGlobal(new PyGlobal("collections", "OrderedDict"));
    this.out.u8(OP.EMPTY_TUPLE);
    this.out.u8(OP.REDUCE);
    this.memoize(d);
    this.saveItems(d.entries());
    if (d.attrs && d.attrs.size > 0) {
      this.save(d.attrs);
      this.out.u8(OP.BUILD);
    }
  }

  private saveItems(entries: Iterable<readonly [unknown, unknown]>): void {
    let batch: Array<readonly [unknown, unknown]> = [];
    const flush = () => {
      if (batch.length === 1) {
        this.save(batch[0]![0]);
        this.save(batch[0]![1]);
        this.out.u8(OP.SETITEM);
      } else if (batch.length > 1) {
        this.out.u8(OP.MARK);
        for (const [k, v] of batch) {
          this.save(k);
          this.save(v);
        }
        this.out.u8(OP.SETITEMS);
      }
      batch = [];
    };
    for (const e of entries) {
      batch.push(e);
      if (batch.length === BATCHSIZE) flush();
    }
    flush();
  }
}

/** Pickles value with protocol 2, byte for byte as CPython would for the same object graph. */
export function pickleDump(value: unknown, hooks: PickleHooks = {}): Uint8Array {
  return new Pickler(hooks).dump(value);
}

// ---------------------------------------------------------------------------------
// Reader

/** What a caller lets the reader build beyond plain data. */
export interface UnpickleHooks {
  /** Error messages start with this (the file, and the record in it). */
  source: string;
  /** Whether module.name may appear in the pickle (anything else is refused). */
  allowGlobal(module: string, name: string): boolean;
  /** The result of calling an allowed global with args (REDUCE). Throw to refuse. */
  call(func: PyGlobal, args: readonly PyValue[]): PyValue;
  /** The object a persistent id stands for (BINPERSID). Throw to refuse. */
  persistentLoad(pid: PyValue): PyValue;
}

const MARK = Symbol("mark");
type StackItem = PyValue | typeof MARK;

const utf8 = new TextDecoder("utf-8", { fatal: true });
const latin1 = new TextDecoder("latin1");

class Unpickler {
  private pos = 0;
  private stack: StackItem[] = [];
  private readonly marks: number[] = [];
  private readonly memo = new Map<number, PyValue>();
  private readonly view: DataView;

  constructor(private readonly data: Uint8Array, private readonly hooks: UnpickleHooks) {
    this.view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  }

  private fail(msg: string, at = this.pos): never {
    throw new CheckpointError(`${this.hooks.source}: bad pickle at byte ${at}: ${msg}`);
  }

  private need(n: number): number {
    if (n < 0 || this.pos + n > this.data.length) this.fail(`truncated (needs ${n} more bytes, has ${this.data.length - this.pos})`);
    const at = this.pos;
    this.pos += n;
    return at;
  }
  private u8(): number {
    return this.data[this.need(1)]!;
  }
  private u16(): number {
    return this.view.getUint16(this.need(2), true);
  }
  private u32(): number {
    return this.view.getUint32(this.need(4), true);
  }
  private u64(): number {
    const at = this.need(8);
    const v = this.view.getBigUint64(at, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail(`length ${v} too large`, at);
    return Number(v);
  }
  private take(n: number): Uint8Array {
    const at = this.need(n);
    return this.data.subarray(at, at + n);
  }
  private line(): string {
    const end = this.data.indexOf(0x0a, this.pos);
    if (end < 0) this.fail("text argument without end of line");
    const s = latin1.decode(this.data.subarray(this.pos, end));
    this.pos = end + 1;
    return s;
  }
  private str(bytes: Uint8Array): string {
    try {
      return utf8.decode(bytes);
    } catch {
      return this.fail("string is not valid UTF-8");
    }
  }

  /** n, the length of an integer's encoding, unless it exceeds the budget (budget.ts). */
  private intBytes(n: number, at: number): number {
    if (n > MAX_INT_BYTES) this.fail(`an integer of ${n} bytes or digits; the limit is ${MAX_INT_BYTES} (a checkpoint's integers need 8)`, at);
    return n;
  }

  private push(v: StackItem): void {
    this.stack.push(v);
  }
  private pop(): PyValue {
    if (this.stack.length === 0 || (this.marks.length > 0 && this.stack.length <= this.marks[this.marks.length - 1]!)) {
      this.fail("stack underflow");
    }
    const v = this.stack.pop()!;
    if (v === MARK) this.fail("unexpected MARK");
    return v;
  }
  private top(): PyValue {
    const v = this.stack[this.stack.length - 1];
    if (v === undefined || v === MARK) this.fail("stack underflow");
    return v;
  }
  /** Items above the most recent MARK, which is removed. */
  private popMark(): PyValue[] {
    const m = this.marks.pop();
    if (m === undefined) this.fail("no MARK on the stack");
    const items = this.stack.splice(m);
    items.shift(); // the MARK itself
    return items as PyValue[];
  }

  private memoGet(idx: number): void {
    if (!this.memo.has(idx)) this.fail(`memo entry ${idx} was never set`);
    this.push(this.memo.get(idx)!);
  }
  private memoPut(idx: number): void {
    this.memo.set(idx, this.top());
  }

  private key(k: PyValue): PyKey {
    if (k === null || typeof k === "string" || typeof k === "number" || typeof k === "bigint" || typeof k === "boolean") return k;
    if (k instanceof PyFloat) return k.value;
    return this.fail(`unsupported dict key of type ${pyTypeName(k)}`);
  }
  private setItems(target: PyValue, items: PyValue[]): void {
    if (!(target instanceof PyDict)) this.fail(`SETITEM(S) on a ${pyTypeName(target)}`);
    if (items.length % 2) this.fail("SETITEMS with an odd number of items");
    for (let i = 0; i < items.length; i += 2) target.set(this.key(items[i]!), items[i + 1]!);
  }
  private appendItems(target: PyValue, items: PyValue[]): void {
    if (!Array.isArray(target)) this.fail(`APPEND(S) on a ${pyTypeName(target)}`);
    for (const item of items) target.push(item); // not push(...items): a long batch would overflow the call stack
  }
  private global(module: string, name: string): PyGlobal {
    if (!this.hooks.allowGlobal(module, name)) {
      this.fail(`refusing global ${module}.${name} (not part of a tensor/state-dict checkpoint)`);
    }
    return new PyGlobal(module, name);
  }
  private callHook(fn: () => PyValue, at: number): PyValue {
    try {
      return fn();
    } catch (e) {
      if (e instanceof CheckpointError) throw e;
      return this.fail((e as Error).message, at);
    }
  }

  load(): PyValue {
    for (;;) {
      const at = this.pos;
      const op = this.u8();
      switch (op) {
        case OP.PROTO: {
          const p = this.u8();
          if (p > 5) this.fail(`unsupported pickle protocol ${p}`, at);
          break;
        }
        case OP.FRAME:
          this.u64(); // frames only group bytes; the data is read as it comes
          break;
        case OP.STOP: {
          const result = this.pop();
          if (this.stack.length !== 0 || this.marks.length !== 0) this.fail("data left on the stack at STOP", at);
          if (this.pos !== this.data.length) this.fail(`${this.data.length - this.pos} bytes after STOP`, at);
          return result;
        }
        case OP.MARK:
          this.marks.push(this.stack.length);
          this.stack.push(MARK);
          break;
        case OP.POP:
          if (this.stack[this.stack.length - 1] === MARK) this.popMark();
          else this.pop();
          break;
        case OP.POP_MARK:
          this.popMark();
          break;
        case OP.DUP:
          this.push(this.top());
          break;
        case OP.NONE:
          this.push(null);
          break;
        case OP.NEWTRUE:
          this.push(true);
          break;
        case OP.NEWFALSE:
          this.push(false);
          break;
        case OP.BININT:
          this.push(this.view.getInt32(this.need(4), true));
          break;
        case OP.BININT1:
          this.push(this.u8());
          break;
        case OP.BININT2:
          this.push(this.u16());
          break;
        case OP.LONG1:
          this.push(intValue(decodeLong(this.take(this.intBytes(this.u8(), at)))));
          break;
        case OP.LONG4:
          this.push(intValue(decodeLong(this.take(this.intBytes(this.u32(), at)))));
          break;
        case OP.INT: {
          const s = this.line();
          this.intBytes(s.length, at);
          if (s === "00") this.push(false);
          else if (s === "01") this.push(true);
          else if (/^[+-]?\d+$/.test(s)) this.push(intValue(BigInt(s)));
          else this.fail(`bad INT ${JSON.stringify(s)}`, at);
          break;
        }
        case OP.LONG: {
          const s = this.line().replace(/L$/, "");
          this.intBytes(s.length, at);
          if (!/^[+-]?\d+$/.test(s)) this.fail(`bad LONG ${JSON.stringify(s)}`, at);
          this.push(intValue(BigInt(s)));
          break;
        }
        case OP.BINFLOAT:
          this.push(new PyFloat(this.view.getFloat64(this.need(8), false)));
          break;
        case OP.FLOAT: {
          const s = this.line().trim().toLowerCase();
          const special: Record<string, number> = { inf: Infinity, "+inf": Infinity, "-inf": -Infinity, nan: NaN };
          const x = s in special ? special[s]! : /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/.test(s) ? Number(s) : undefined;
          if (x === undefined) this.fail(`bad FLOAT ${JSON.stringify(s)}`, at);
          this.push(new PyFloat(x));
          break;
        }
        case OP.BINUNICODE:
          this.push(this.str(this.take(this.u32())));
          break;
        case OP.SHORT_BINUNICODE:
          this.push(this.str(this.take(this.u8())));
          break;
        case OP.BINUNICODE8:
          this.push(this.str(this.take(this.u64())));
          break;
        case OP.BINBYTES:
          this.push(this.take(this.u32()).slice());
          break;
        case OP.SHORT_BINBYTES:
          this.push(this.take(this.u8()).slice());
          break;
        case OP.BINBYTES8:
          this.push(this.take(this.u64()).slice());
          break;
        case OP.EMPTY_DICT:
          this.push(new PyDict());
          break;
        case OP.EMPTY_LIST:
          this.push([]);
          break;
        case OP.EMPTY_TUPLE:
          this.push(new PyTuple([]));
          break;
        case OP.TUPLE1:
        case OP.TUPLE2:
        case OP.TUPLE3: {
          const n = op - OP.TUPLE1 + 1;
          const items: PyValue[] = [];
          for (let i = 0; i < n; i++) items.unshift(this.pop());
          this.push(new PyTuple(items));
          break;
        }
        case OP.TUPLE:
          this.push(new PyTuple(this.popMark()));
          break;
        case OP.LIST:
          this.push(this.popMark());
          break;
        case OP.DICT: {
          const d = new PyDict();
          this.setItems(d, this.popMark());
          this.push(d);
          break;
        }
        case OP.SETITEM: {
          const v = this.pop();
          const k = this.pop();
          this.setItems(this.top(), [k, v]);
          break;
        }
        case OP.SETITEMS: {
          const items = this.popMark();
          this.setItems(this.top(), items);
          break;
        }
        case OP.APPEND: {
          const v = this.pop();
          this.appendItems(this.top(), [v]);
          break;
        }
        case OP.APPENDS: {
          const items = this.popMark();
          this.appendItems(this.top(), items);
          break;
        }
        case OP.BINPUT:
          this.memoPut(this.u8());
          break;
        case OP.LONG_BINPUT:
          this.memoPut(this.u32());
          break;
        case OP.PUT: {
          const s = this.line();
          if (!/^\d+$/.test(s)) this.fail(`bad PUT ${JSON.stringify(s)}`, at);
          this.memoPut(Number(s));
          break;
        }
        case OP.MEMOIZE:
          this.memoPut(this.memo.size);
          break;
        case OP.BINGET:
          this.memoGet(this.u8());
          break;
        case OP.LONG_BINGET:
          this.memoGet(this.u32());
          break;
        case OP.GET: {
          const s = this.line();
          if (!/^\d+$/.test(s)) this.fail(`bad GET ${JSON.stringify(s)}`, at);
          this.memoGet(Number(s));
          break;
        }
        case OP.GLOBAL: {
          const module = this.line();
          const name = this.line();
          this.push(this.global(module, name));
          break;
        }
        case OP.STACK_GLOBAL: {
          const name = this.pop();
          const module = this.pop();
          if (typeof module !== "string" || typeof name !== "string") this.fail("STACK_GLOBAL needs two strings", at);
          this.push(this.global(module, name));
          break;
        }
        case OP.REDUCE: {
          const args = this.pop();
          const func = this.pop();
          if (!(func instanceof PyGlobal)) this.fail(`REDUCE calls a ${pyTypeName(func)}`, at);
          if (!(args instanceof PyTuple)) this.fail(`REDUCE arguments are a ${pyTypeName(args)}, not a tuple`, at);
          this.push(this.callHook(() => this.hooks.call(func, args.items), at));
          break;
        }
        case OP.BINPERSID: {
          const pid = this.pop();
          this.push(this.callHook(() => this.hooks.persistentLoad(pid), at));
          break;
        }
        case OP.BUILD: {
          const state = this.pop();
          const target = this.top();
          if (state === null) break;
          if (target instanceof PyDict && state instanceof PyDict) {
            // e.g. the _metadata attribute of a module's state_dict()
            target.attrs ??= new PyDict();
            for (const [k, v] of state.entries()) target.attrs.set(k, v);
          } else if (state instanceof PyDict && state.size === 0) {
            // an empty __dict__: nothing to set
          } else {
            this.fail(`cannot set state ${pyTypeName(state)} on a ${pyTypeName(target)}`, at);
          }
          break;
        }
        default:
          this.fail(`unknown or unsupported opcode 0x${op.toString(16).padStart(2, "0")}`, at);
      }
    }
  }
}

/** Unpickles data (the whole of it must be one pickle). */
export function unpickle(data: Uint8Array, hooks: UnpickleHooks): PyValue {
  return new Unpickler(data, hooks).load();
}
