/**
 * torch.save / torch.load file format (zip serialization, torch >= 1.6), written the
 * way torch 1.13 writes it:
 *   <archive>/data.pkl    the object, pickle protocol 2; each tensor is
 *                         torch._utils._rebuild_tensor_v2(<storage>, offset, size, stride,
 *                         requires_grad, OrderedDict()), each storage a persistent id
 *                         ('storage', torch.<Type>Storage, key, 'cpu', numel)
 *   <archive>/data/<key>  one record per storage (raw little-endian elements), keys
 *                         "0", "1", ... in pickling order, records sorted by key as strings
 *   <archive>/version     "3\n"
 * <archive> is the file name without its extension, as torch.save(obj, path) names it.
 */
import { InputFileError, readInputFile, withInputFile } from "../util/input-file.ts";
import { availableMemoryBytes } from "../util/memory.ts";
import { basename } from "node:path";
import { pickleDump, unpickle } from "./pickle.ts";
import { CheckpointError, DTYPES, PyDict, PyGlobal, PyTuple, Storage, Tensor, dtypeOfStorageName, pyTypeName } from "./pyvalue.ts";
import type { DType, PyInput, PyValue } from "./pyvalue.ts";
import { writeFileAtomic } from "../util/atomic.ts";
import { ZipArchive, zipStoredChunks } from "./zip.ts";
import type { ZipRecord, ZipWriteOptions } from "./zip.ts";

const REBUILD_TENSOR = new PyGlobal("torch._utils", "_rebuild_tensor_v2");
const FORMAT_VERSION = "3\n"; // what torch.save writes (torch 1.6 .. 2.x)
const MAX_READ_VERSION = 10; // torch 1.13's reader accepts versions 1..10
const EXPECTED_FILE = "a PyTorch checkpoint (.pt zip archive)"; // what messages say a refused file should be

export interface TorchSaveOptions extends ZipWriteOptions {
  /** Top-level folder of the archive (torch.save uses the file name without extension). */
  archiveName?: string;
}

/** The archive folder torch.save(obj, path) uses: the base name up to its last dot. */
export function archiveNameFor(path: string): string {
  const base = basename(path);
  const dot = base.lastIndexOf(".");
  const stem = dot > 0 ? base.slice(0, dot) : dot === 0 ? "" : base;
  return stem || "archive";
}

/**
 * obj as a torch.save file, streamed in chunks (tensor data is not copied). Tensors
 * that share a Storage object share one storage record, as in torch.
 */
export function* torchSaveChunks(obj: PyInput, options: TorchSaveOptions = {}): Generator<Uint8Array> {
  const prefix = options.archiveName ?? "archive";
  if (!prefix || prefix.includes("/")) throw new Error(`bad archive name ${JSON.stringify(prefix)}`);
  const keys = new Map<Storage, string>();
  const pkl = pickleDump(obj, {
    persistentId(o) {
      if (!(o instanceof Storage)) return undefined;
      let key = keys.get(o);
      if (key === undefined) {
        key = String(keys.size);
        keys.set(o, key);
      }
      return new PyTuple(["storage", new PyGlobal("torch", DTYPES[o.dtype].storage), key, "cpu", o.numel]);
    },
    reduce(o) {
      if (!(o instanceof Tensor)) return undefined;
      return {
        func: REBUILD_TENSOR,
        args: [o.storage, o.storageOffset, new PyTuple([...o.shape]), new PyTuple([...o.stride]), o.requiresGrad, new PyDict(true)],
      };
    },
  });
  const storages = [...keys].sort((a, b) => (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  function* records(): Generator<ZipRecord> {
    yield { name: `${prefix}/data.pkl`, data: pkl };
    for (const [storage, key] of storages) yield { name: `${prefix}/data/${key}`, data: storage };
    yield { name: `${prefix}/version`, data: new TextEncoder().encode(FORMAT_VERSION) };
  }
  yield* zipStoredChunks(records(), options);
}

/** torch.save(obj, path), replacing path atomically. */
export function saveTorchFile(path: string, obj: PyInput, options: ZipWriteOptions = {}): void {
  writeFileAtomic(path, torchSaveChunks(obj, { ...options, archiveName: archiveNameFor(path) }));
}

// ---------------------------------------------------------------------------------

const ALLOWED_GLOBALS = new Set([
  "collections.OrderedDict",
  "torch._utils._rebuild_tensor_v2",
  "torch._utils._rebuild_parameter",
  "_codecs.encode",
  "__builtin__.bytes",
  "builtins.bytes",
]);

function isInt(v: PyValue): v is number {
  return typeof v === "number" && Number.isSafeInteger(v);
}

function intTuple(v: PyValue, what: string): number[] {
  if (!(v instanceof PyTuple) || !v.items.every(isInt)) throw new Error(`${what} is a ${pyTypeName(v)}, expected a tuple of ints`);
  return v.items as number[];
}

/**
 * The object in a torch.save file held in bytes (tensors view the buffer without
 * copies where alignment allows). source names the file in error messages.
 */
export function loadTorchBytes(bytes: Uint8Array, source: string): PyValue {
  return loadTorchArchive(ZipArchive.open(bytes, source), source, false);
}

/**
 * torch.load of the file at path without reading it whole: the archive's directory and
 * data.pkl are read, and each storage streams its record from the open file in chunks
 * (Storage.chunks; Storage.data reads one record into memory). use(value, fileBytes) runs
 * while the file is open; afterwards, with verifyAll, the CRC-32 of every record use did
 * not read whole is checked. The file must be a regular file of at most maxBytes
 * (src/util/input-file.ts).
 */
export function withTorchFile<T>(path: string, maxBytes: number, verifyAll: boolean, use: (value: PyValue, fileBytes: number) => T): T {
  try {
    return withInputFile(path, { maxBytes, expected: EXPECTED_FILE }, (fd, size) => {
      const zip = ZipArchive.openFile(fd, size, path);
      const result = use(loadTorchArchive(zip, path, true), size);
      if (verifyAll) zip.verifyUnread();
      return result;
    });
  } catch (e) {
    if (e instanceof InputFileError) throw new CheckpointError(e.message);
    throw e;
  }
}

function loadTorchArchive(zip: ZipArchive, source: string, streamed: boolean): PyValue {
  const first = zip.entries[0];
  if (!first) throw new CheckpointError(`${source}: the zip archive has no records`);
  const slash = first.name.indexOf("/");
  if (slash <= 0) throw new CheckpointError(`${source}: record ${first.name} is not inside an archive folder (not a torch.save file)`);
  const prefix = first.name.slice(0, slash + 1);
  const record = (name: string) => zip.get(prefix + name);
  const text = (name: string) => {
    const e = record(name);
    return e ? new TextDecoder().decode(zip.data(e)) : undefined;
  };

  const version = text(".data/version") ?? text("version");
  if (version === undefined) throw new CheckpointError(`${source}: no ${prefix}version record (not a torch.save file)`);
  if (!/^\d+\s*$/.test(version) || Number(version) < 1 || Number(version) > MAX_READ_VERSION) {
    throw new CheckpointError(`${source}: unsupported format version ${JSON.stringify(version.trim())} (expected 1..${MAX_READ_VERSION})`);
  }
  const byteorder = text("byteorder");
  if (byteorder !== undefined && byteorder.trim() !== "little") {
    throw new CheckpointError(`${source}: byte order ${JSON.stringify(byteorder.trim())} is not supported (expected little)`);
  }
  const pkl = record("data.pkl");
  if (!pkl) {
    const hint = record("constants.pkl") ? " (a TorchScript archive from torch.jit.save?)" : "";
    throw new CheckpointError(`${source}: no ${prefix}data.pkl record${hint}; expected a file written by torch.save`);
  }

  const storages = new Map<string, Storage>();
  const persistentLoad = (pid: PyValue): PyValue => {
    const bad = (why: string): never => {
      throw new CheckpointError(`${source}: bad storage reference in data.pkl: ${why}`);
    };
    if (!(pid instanceof PyTuple) || pid.items.length !== 5 || pid.items[0] !== "storage") {
      return bad(`expected ('storage', type, key, location, numel), got a ${pyTypeName(pid)}`);
    }
    const [, type, key, location, numel] = pid.items;
    if (!(type instanceof PyGlobal) || type.module !== "torch") return bad(`storage type ${pyTypeName(type)}`);
    if (typeof key !== "string" || typeof location !== "string" || !isInt(numel) || numel < 0) {
      return bad(`key ${pyTypeName(key)}, location ${pyTypeName(location)}, numel ${pyTypeName(numel)}`);
    }
    const dtype: DType | undefined = type.name === "UntypedStorage" ? "uint8" : dtypeOfStorageName(type.name);
    if (!dtype) return bad(`unsupported storage type torch.${type.name}`);
    const seen = storages.get(key);
    if (seen) {
      if (seen.dtype !== dtype || seen.numel !== numel) {
        return bad(`storage ${key} is used as ${seen.numel} x ${seen.dtype} and as ${numel} x ${dtype}`);
      }
      return seen;
    }
    const entry = record(`data/${key}`);
    if (!entry) return bad(`storage ${key} has no record ${prefix}data/${key}`);
    const itemsize = DTYPES[dtype].itemsize;
    if (entry.size !== numel * itemsize) {
      return bad(`storage ${key}: record has ${entry.size} bytes, expected ${numel} x ${itemsize} (${dtype}) = ${numel * itemsize}`);
    }
    let storage: Storage;
    if (streamed) {
      storage = new Storage(dtype, { numel, chunks: (from, to) => zip.chunks(entry, from, to) });
    } else {
      let raw = zip.data(entry);
      // unaligned (a re-zipped file: `zip -0` does not pad): copy once (Buffer.slice would not copy)
      if ((raw.byteOffset % itemsize) !== 0) raw = new Uint8Array(raw);
      storage = new Storage(dtype, DTYPES[dtype].view(raw.buffer, raw.byteOffset, numel));
    }
    storages.set(key, storage);
    return storage;
  };

  const call = (func: PyGlobal, args: readonly PyValue[]): PyValue => {
    switch (func.qualified) {
      case "collections.OrderedDict": {
        const d = new PyDict(true);
        if (args.length === 0) return d;
        const items = args[0];
        if (args.length !== 1 || !Array.isArray(items)) throw new Error("OrderedDict() takes a list of pairs here");
        for (const it of items) {
          if (!(it instanceof PyTuple) || it.items.length !== 2) throw new Error("OrderedDict item is not a pair");
          const k = it.items[0]!;
          if (k !== null && typeof k === "object") throw new Error(`unsupported OrderedDict key ${pyTypeName(k)}`);
          d.set(k, it.items[1]!);
        }
        return d;
      }
      case "torch._utils._rebuild_tensor_v2": {
        if (args.length !== 6 && args.length !== 7) throw new Error(`_rebuild_tensor_v2 takes 6 or 7 arguments, got ${args.length}`);
        const [storage, offset, size, stride, requiresGrad, hooks] = args;
        if (!(storage instanceof Storage)) throw new Error(`tensor storage is a ${pyTypeName(storage)}`);
        if (!isInt(offset!)) throw new Error(`tensor storage offset is a ${pyTypeName(offset)}`);
        if (typeof requiresGrad !== "boolean") throw new Error(`requires_grad is a ${pyTypeName(requiresGrad)}`);
        if (!(hooks instanceof PyDict)) throw new Error(`backward hooks are a ${pyTypeName(hooks)}`);
        return new Tensor(storage, intTuple(size!, "tensor size"), intTuple(stride!, "tensor stride"), offset, requiresGrad);
      }
      case "torch._utils._rebuild_parameter": {
        const [data, requiresGrad] = args;
        if (!(data instanceof Tensor) || typeof requiresGrad !== "boolean") throw new Error("bad _rebuild_parameter arguments");
        return new Tensor(data.storage, data.shape, data.stride, data.storageOffset, requiresGrad);
      }
      case "_codecs.encode": {
        const [s, enc] = args;
        if (typeof s !== "string" || enc !== "latin1") throw new Error("_codecs.encode is only read for latin1 bytes");
        return Uint8Array.from(s, (c) => c.charCodeAt(0));
      }
      case "__builtin__.bytes":
      case "builtins.bytes":
        if (args.length !== 0) throw new Error("bytes() is only read without arguments");
        return new Uint8Array(0);
    }
    throw new Error(`${func.qualified} cannot be called`);
  };

  return unpickle(zip.data(pkl), {
    source: `${source}: ${pkl.name}`,
    allowGlobal: (module, name) =>
      ALLOWED_GLOBALS.has(`${module}.${name}`) || (module === "torch" && (name === "UntypedStorage" || dtypeOfStorageName(name) !== undefined)),
    call,
    persistentLoad,
  });
}

/** The bytes of a checkpoint file: a regular file of at most maxBytes (src/util/input-file.ts). */
export function readTorchFile(path: string, maxBytes: number = availableMemoryBytes()): Uint8Array {
  try {
    return readInputFile(path, { maxBytes, expected: EXPECTED_FILE });
  } catch (e) {
    if (e instanceof InputFileError) throw new CheckpointError(e.message);
    throw e;
  }
}

/** torch.load(path) for the value types above; maxBytes bounds the file size. */
export function loadTorchFile(path: string, maxBytes?: number): PyValue {
  return loadTorchBytes(readTorchFile(path, maxBytes), path);
}
