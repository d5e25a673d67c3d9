/**
 * Documents of plain text files, as UTF-8 bytes (the byte tokenizer needs no decoding).
 * A leading UTF-8 byte order mark is dropped and CRLF becomes LF.
 *   file:       each non-empty file is one document (read whole)
 *   line:       each non-empty line is one document (read in chunks: any file size)
 *   blank-line: documents are separated by empty lines (read in chunks)
 */
import { closeSync, openSync, readFileSync, readSync } from "node:fs";

export type DocMode = "file" | "line" | "blank-line";
export const DOC_MODES: readonly DocMode[] = ["file", "line", "blank-line"];

const CHUNK = 1 << 23;

function stripBom(b: Uint8Array): Uint8Array {
  return b.length >= 3 && b[0] === 0xef && b[1] === 0xbb && b[2] === 0xbf ? b.subarray(3) : b;
}

/** The bytes without the \r of every \r\n. */
export function crlfToLf(b: Uint8Array): Uint8Array {
  let n = 0;
  for (let i = 0; i < b.length; i++) if (b[i] === 0x0d && b[i + 1] === 0x0a) n++;
  if (n === 0) return b;
  const out = new Uint8Array(b.length - n);
  let k = 0;
  for (let i = 0; i < b.length; i++) if (!(b[i] === 0x0d && b[i + 1] === 0x0a)) out[k++] = b[i];
  return out;
}

/** Lines of a file without their line ending (\n or \r\n), read in chunks. */
export function* fileLines(path: string): Generator<Uint8Array> {
  const fd = openSync(path, "r");
  try {
    let carry = new Uint8Array(0);
    let first = true;
    const buf = new Uint8Array(CHUNK);
    for (;;) {
      const got = readSync(fd, buf, 0, CHUNK, null);
      let data: Uint8Array = carry.length > 0 ? concat(carry, buf.subarray(0, got)) : buf.subarray(0, got);
      if (first) {
        data = stripBom(data);
        first = false;
      }
      let start = 0;
      for (let i = 0; i < data.length; i++) {
        if (data[i] === 0x0a) {
          const end = i > start && data[i - 1] === 0x0d ? i - 1 : i;
          yield data.slice(start, end);
          start = i + 1;
        }
      }
      carry = data.slice(start);
      if (got === 0) {
        if (carry.length > 0) yield carry[carry.length - 1] === 0x0d ? carry.slice(0, -1) : carry;
        return;
      }
    }
  } finally {
    closeSync(fd);
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

function isBlank(line: Uint8Array): boolean {
  for (const c of line) if (c !== 0x20 && c !== 0x09) return false;
  return true;
}

/** The documents of one file (see the module comment). */
export function* fileDocuments(path: string, mode: DocMode): Generator<Uint8Array> {
  if (mode === "file") {
    const doc = crlfToLf(stripBom(new Uint8Array(readFileSync(path))));
    if (doc.length > 0) yield doc;
    return;
  }
  if (mode === "line") {
    for (const line of fileLines(path)) if (!isBlank(line)) yield line;
    return;
  }
  let parts: Uint8Array[] = [];
  const join = () => {
    const n = parts.reduce((s, p) => s + p.length + 1, -1);
    const out = new Uint8Array(n);
    let k = 0;
    parts.forEach((p, i) => {
      if (i > 0) out[k++] = 0x0a;
      out.set(p, k);
      k += p.length;
    });
    parts = [];
    return out;
  };
  for (const line of fileLines(path)) {
    if (isBlank(line)) {
      if (parts.length > 0) yield join();
    } else parts.push(line);
  }
  if (parts.length > 0) yield join();
}
