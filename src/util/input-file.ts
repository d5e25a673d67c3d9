/**
 * Reading an input file (checkpoint, config, cache meta, cache .bin, metrics.jsonl) the
 * one safe way: open without blocking (a FIFO must not hang the open), fstat the open
 * descriptor, refuse anything but a regular file (a device, a FIFO, a socket, a folder)
 * and anything larger than the caller's budget, then read at most the size fstat gave
 * (/dev/zero behind a symlink is refused before a byte is read). The bytes are a fresh,
 * 8-byte aligned Uint8Array (typed views of it need no copy).
 */
import { closeSync, constants, fstatSync, openSync, readSync, type Stats } from "node:fs";
import { InputError } from "../errors.ts";

/** A refused or unreadable input file; reason says why without the path. */
export class InputFileError extends InputError {
  override name = "InputFileError";
  // fsCode, not code: writingTo() takes an error with an errno code for a failed write
  constructor(readonly path: string, readonly reason: string, readonly fsCode?: string) {
    super(`${path}: ${reason}`);
  }
}

export interface InputFileOptions {
  /** The largest size accepted, in bytes. */
  maxBytes: number;
  /** What the file should be, for messages ("a config file", "a PyTorch checkpoint"). */
  expected: string;
  /** Refuse a symbolic link at the path itself (files under checkpoints/). */
  noFollow?: boolean;
}

function kindOf(st: Stats): string {
  if (st.isDirectory()) return "a folder";
  if (st.isFIFO()) return "a FIFO (named pipe)";
  if (st.isCharacterDevice()) return "a character device";
  if (st.isBlockDevice()) return "a block device";
  if (st.isSocket()) return "a socket";
  return "not a regular file";
}

/** Bytes as people read them: 1.5 KiB, 3.0 GiB. */
export function formatBytes(n: number): string {
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} bytes` : `${v.toFixed(1)} ${units[u]}`;
}

const REASONS: Record<string, string> = {
  ENOENT: "no such file",
  EACCES: "permission denied",
  ELOOP: "is a symbolic link (refused here: it could point out of the folder)",
  EISDIR: "is a folder",
  ENOTDIR: "a part of the path is not a folder",
};

/**
 * Opens path as a regular file within budget and calls use(fd, size); closes it after.
 * Throws InputFileError naming the file for anything else.
 */
export function withInputFile<T>(path: string, o: InputFileOptions, use: (fd: number, size: number) => T): T {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | (o.noFollow ? constants.O_NOFOLLOW : 0));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new InputFileError(path, `cannot read: ${(code && REASONS[code]) ?? (e as Error).message}`, code);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new InputFileError(path, `is ${kindOf(st)}, expected ${o.expected} (a regular file)`);
    if (st.size > o.maxBytes) {
      throw new InputFileError(path, `is ${formatBytes(st.size)}, more than the ${formatBytes(o.maxBytes)} ${o.expected} may have here`);
    }
    return use(fd, st.size);
  } finally {
    closeSync(fd);
  }
}

/** The bytes of a regular file of at most o.maxBytes (see the top of this file). */
export function readInputFile(path: string, o: InputFileOptions): Uint8Array {
  return withInputFile(path, o, (fd, size) => {
    const bytes = new Uint8Array(size);
    let at = 0;
    while (at < size) {
      const n = readSync(fd, bytes, at, Math.min(size - at, 1 << 24), null);
      if (n === 0) break; // shrank since fstat: the format checks will say it is truncated
      at += n;
    }
    return at === size ? bytes : bytes.subarray(0, at);
  });
}

/** The size of a regular file within budget (for callers that map it themselves). */
export function inputFileSize(path: string, o: InputFileOptions): number {
  return withInputFile(path, o, (_fd, size) => size);
}

/** readInputFile as UTF-8 text. */
export function readInputText(path: string, o: InputFileOptions): string {
  return new TextDecoder().decode(readInputFile(path, o));
}

/**
 * The deepest nesting of [ and { in a JSON text (strings skipped), stopping as soon as it
 * passes limit: a linear scan run before a recursive parser sees the text.
 */
export function jsonDepthExceeds(text: string, limit: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > limit) return true;
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  return false;
}

/** Nesting limit of every JSON file read (configs, cache metas): real ones use 3 levels. */
export const MAX_JSON_DEPTH = 32;
/** Size limit of a config or cache meta file (real ones are under 4 KiB; a meta may list SFT boundaries inline). */
export const MAX_JSON_FILE_BYTES = 64 * 1024 * 1024;
/** Size limit of a config file. */
export const MAX_CONFIG_BYTES = 1024 * 1024;
