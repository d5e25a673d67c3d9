/**
 * ZIP archives with STORED entries, as PyTorch's writer (miniz, torch >= 1.6) lays
 * them out: every record's data starts on a 64-byte boundary (the local header's
 * extra field is padded with an "FB" record of 'Z' bytes), sizes and CRC-32 follow
 * the data in a data descriptor, and the archive always ends with a ZIP64
 * end-of-central-directory record, its locator and the classic one.
 */
import { readSync } from "node:fs";
import { crc32 } from "node:zlib";
import { CheckpointError } from "./pyvalue.ts";

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_DESCRIPTOR = 0x08074b50;
const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_EOCD = 0x06064b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
const LOCAL_HEADER_SIZE = 30;
const CENTRAL_HEADER_SIZE = 46;
const EOCD_SIZE = 22;
const ZIP64_EOCD_SIZE = 56;
const ZIP64_LOCATOR_SIZE = 20;
const FLAG_DESCRIPTOR = 0x0008; // sizes and CRC-32 in a data descriptor after the data
const FLAG_UTF8 = 0x0800; // UTF-8 names
const U32_MAX = 0xffffffff;
const U16_MAX = 0xffff;
const ZIP64_EXTRA_ID = 0x0001;

/** Record bytes that are streamed, not held: chunks in order, byteLength in all (a Storage is one). */
export interface ZipStream {
  readonly byteLength: number;
  /** Each chunk is valid only until the next is taken (sources reuse one buffer). */
  chunks(): Iterable<Uint8Array>;
}

export interface ZipRecord {
  name: string; // full name inside the archive, e.g. "best/data/0"
  data: Uint8Array | ZipStream;
}

export interface ZipWriteOptions {
  /** Data start alignment in bytes (PyTorch: 64). */
  align?: number;
  /** Sizes and offsets from this value on are written as ZIP64 (default 0xFFFFFFFF, as the format
   * requires; lower only to exercise the ZIP64 path in tests). */
  zip64Threshold?: number;
}

class Bytes {
  readonly buf: Uint8Array;
  private readonly view: DataView;
  private at = 0;
  constructor(n: number) {
    this.buf = new Uint8Array(n);
    this.view = new DataView(this.buf.buffer);
  }
  u16(v: number): this {
    this.view.setUint16(this.at, v, true);
    this.at += 2;
    return this;
  }
  u32(v: number): this {
    this.view.setUint32(this.at, v, true);
    this.at += 4;
    return this;
  }
  u64(v: number): this {
    this.view.setBigUint64(this.at, BigInt(v), true);
    this.at += 8;
    return this;
  }
  bytes(b: Uint8Array): this {
    this.buf.set(b, this.at);
    this.at += b.length;
    return this;
  }
  fill(v: number, n: number): this {
    this.buf.fill(v, this.at, this.at + n);
    this.at += n;
    return this;
  }
  done(): Uint8Array {
    if (this.at !== this.buf.length) throw new Error(`internal: wrote ${this.at} of ${this.buf.length} bytes`);
    return this.buf;
  }
}

/** The ZIP64 extended-information extra field with the given 64-bit values (or none). */
function zip64Extra(values: number[]): Uint8Array {
  if (values.length === 0) return new Uint8Array(0);
  const b = new Bytes(4 + 8 * values.length).u16(ZIP64_EXTRA_ID).u16(8 * values.length);
  for (const v of values) b.u64(v);
  return b.done();
}

interface CentralEntry {
  name: Uint8Array;
  offset: number;
  size: number;
  crc: number;
  flags: number;
}

const textEncoder = new TextEncoder();

/**
 * The archive as a stream of chunks; record data is passed through as is (no copy), its
 * CRC-32 computed as it goes (it is written after the data, in the data descriptor).
 * Offsets are counted as the chunks go, so the whole file is never held at once.
 */
export function* zipStoredChunks(records: Iterable<ZipRecord>, options: ZipWriteOptions = {}): Generator<Uint8Array> {
  const align = options.align ?? 64;
  const big = options.zip64Threshold ?? U32_MAX;
  const central: CentralEntry[] = [];
  const names = new Set<string>();
  let offset = 0;

  for (const rec of records) {
    if (names.has(rec.name)) throw new Error(`duplicate zip record name ${rec.name}`);
    names.add(rec.name);
    const name = textEncoder.encode(rec.name);
    if (name.length > U16_MAX) throw new Error(`zip record name too long: ${rec.name}`);
    const size = rec.data.byteLength;
    // miniz (so torch) writes empty records without a data descriptor.
    const flags = size > 0 ? FLAG_UTF8 | FLAG_DESCRIPTOR : FLAG_UTF8;
    const sizeBig = size >= big;
    const offsetBig = offset >= big;
    const z64 = sizeBig || offsetBig ? zip64Extra([...(sizeBig ? [size, size] : []), ...(offsetBig ? [offset] : [])]) : new Uint8Array(0);
    // The padding record ("FB", u16 length, 'Z' * length) is always present, possibly empty.
    const start = offset + LOCAL_HEADER_SIZE + name.length + z64.length + 4;
    const pad = (align - (start % align)) % align;
    const extraLen = z64.length + 4 + pad;
    const header = new Bytes(LOCAL_HEADER_SIZE + name.length + extraLen)
      .u32(SIG_LOCAL)
      .u16(0) // version needed (as torch writes it)
      .u16(flags)
      .u16(0) // STORED
      .u16(0) // time
      .u16(0) // date
      .u32(0) // crc, sizes: in the data descriptor
      .u32(0)
      .u32(0)
      .u16(name.length)
      .u16(extraLen)
      .bytes(name)
      .bytes(z64)
      .u16(0x4246) // "FB"
      .u16(pad)
      .fill(0x5a, pad) // 'Z'
      .done();
    yield header;
    let crc = 0;
    let written = 0;
    for (const chunk of rec.data instanceof Uint8Array ? [rec.data] : rec.data.chunks()) {
      if (chunk.length === 0) continue;
      crc = crc32(chunk, crc); // before the yield: the chunk's buffer may be refilled after it
      written += chunk.length;
      yield chunk;
    }
    if (written !== size) throw new Error(`internal: record ${rec.name} streamed ${written} of ${size} bytes`);
    crc >>>= 0;
    const descriptor = size === 0
      ? new Uint8Array(0)
      : z64.length > 0
        ? new Bytes(24).u32(SIG_DESCRIPTOR).u32(crc).u64(size).u64(size).done()
        : new Bytes(16).u32(SIG_DESCRIPTOR).u32(crc).u32(size).u32(size).done();
    if (descriptor.length > 0) yield descriptor;
    central.push({ name, offset, size, crc, flags });
    offset += header.length + size + descriptor.length;
  }

  const cdOffset = offset;
  let cdSize = 0;
  for (const e of central) {
    const sizeBig = e.size >= big;
    const offsetBig = e.offset >= big;
    const z64 = zip64Extra([...(sizeBig ? [e.size, e.size] : []), ...(offsetBig ? [e.offset] : [])]);
    const entry = new Bytes(CENTRAL_HEADER_SIZE + e.name.length + z64.length)
      .u32(SIG_CENTRAL)
      .u16(0) // version made by
      .u16(0) // version needed
      .u16(e.flags)
      .u16(0) // STORED
      .u16(0)
      .u16(0)
      .u32(e.crc)
      .u32(sizeBig ? U32_MAX : e.size)
      .u32(sizeBig ? U32_MAX : e.size)
      .u16(e.name.length)
      .u16(z64.length)
      .u16(0) // comment length
      .u16(0) // disk
      .u16(0) // internal attributes
      .u32(0) // external attributes
      .u32(offsetBig ? U32_MAX : e.offset)
      .bytes(e.name)
      .bytes(z64)
      .done();
    cdSize += entry.length;
    yield entry;
  }
  const zip64EocdOffset = cdOffset + cdSize;
  const n = central.length;
  yield new Bytes(ZIP64_EOCD_SIZE + ZIP64_LOCATOR_SIZE + EOCD_SIZE)
    .u32(SIG_ZIP64_EOCD)
    .u64(ZIP64_EOCD_SIZE - 12) // size of the rest of this record
    .u16(0x031e) // version made by (as torch's miniz writes it)
    .u16(0x002d) // version needed: 4.5 (ZIP64)
    .u32(0) // this disk
    .u32(0) // disk of the central directory
    .u64(n)
    .u64(n)
    .u64(cdSize)
    .u64(cdOffset)
    .u32(SIG_ZIP64_LOCATOR)
    .u32(0)
    .u64(zip64EocdOffset)
    .u32(1) // total disks
    .u32(SIG_EOCD)
    .u16(0)
    .u16(0)
    .u16(Math.min(n, U16_MAX))
    .u16(Math.min(n, U16_MAX))
    .u32(cdSize >= big ? U32_MAX : cdSize)
    .u32(cdOffset >= big ? U32_MAX : cdOffset)
    .u16(0) // comment length
    .done();
}

// ---------------------------------------------------------------------------------
// Reader

export interface ZipEntry {
  name: string;
  dataOffset: number; // where the record's bytes start in the archive
  size: number;
  crc32: number;
}

function readU64(view: DataView, at: number, what: string, fail: (m: string) => never): number {
  const v = view.getBigUint64(at, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`${what} ${v} is out of range`);
  return Number(v);
}

/** The bytes of an archive: in memory, or an open file read at offsets. */
interface ArchiveBytes {
  readonly size: number;
  /** length bytes from offset (fewer at the end of a file that shrank): a view or a fresh buffer. */
  read(offset: number, length: number): Uint8Array;
  /** Fills dst from offset; returns how many bytes were read (fewer only at the end). */
  readInto(offset: number, dst: Uint8Array): number;
}

function memoryBytes(bytes: Uint8Array): ArchiveBytes {
  return {
    size: bytes.length,
    read: (offset, length) => bytes.subarray(offset, offset + length),
    readInto(offset, dst) {
      const part = bytes.subarray(offset, offset + dst.length);
      dst.set(part);
      return part.length;
    },
  };
}

function fileBytes(fd: number, size: number): ArchiveBytes {
  const readInto = (offset: number, dst: Uint8Array): number => {
    let at = 0;
    while (at < dst.length) {
      const n = readSync(fd, dst, at, dst.length - at, offset + at);
      if (n === 0) break; // the file shrank since fstat: the record checks say truncated
      at += n;
    }
    return at;
  };
  return {
    size,
    read(offset, length) {
      const out = new Uint8Array(Math.max(0, Math.min(length, size - offset)));
      return out.subarray(0, readInto(offset, out));
    },
    readInto,
  };
}

/** Bytes per read when a record streams from a file (1 MiB: the chunk stays in cache through the CRC-32, the check and the copy; a 1.5 GB load took 0.66 s instead of 0.8 s with 4 MiB). */
const STREAM_CHUNK_BYTES = 1 << 20;

/**
 * A parsed archive. Over a byte buffer (open) every record's CRC-32 is checked at once and
 * record data are views into the buffer; over an open file (openFile) only the central
 * directory and the local headers are read at first, and a record's CRC-32 is checked as
 * its bytes are read (data, chunks) or by verifyUnread.
 */
export class ZipArchive {
  private readonly byName = new Map<string, ZipEntry>();
  readonly entries: ZipEntry[] = [];
  private readonly verified = new Set<ZipEntry>();
  private chunkBuffer: Uint8Array | null = null;

  private constructor(private readonly src: ArchiveBytes, private readonly source: string) {}

  private fail(msg: string): never {
    throw new CheckpointError(`${this.source}: ${msg}`);
  }

  /** Parses the central directory and checks every record (local header, bounds, CRC-32). */
  static open(bytes: Uint8Array, source: string): ZipArchive {
    const zip = new ZipArchive(memoryBytes(bytes), source);
    zip.parse();
    zip.verifyUnread();
    return zip;
  }

  /** Parses the central directory and local headers of an open file of `size` bytes (read at offsets, never whole). */
  static openFile(fd: number, size: number, source: string): ZipArchive {
    const zip = new ZipArchive(fileBytes(fd, size), source);
    zip.parse();
    return zip;
  }

  get(name: string): ZipEntry | undefined {
    return this.byName.get(name);
  }

  /** The record's bytes, CRC-checked (over a buffer: a view into it). */
  data(entry: ZipEntry): Uint8Array {
    const bytes = this.src.read(entry.dataOffset, entry.size);
    if (bytes.length !== entry.size) this.fail(`record ${entry.name}: truncated (the file shrank while it was read)`);
    if (!this.verified.has(entry)) this.checkCrc(entry, crc32(bytes) >>> 0);
    return bytes;
  }

  /**
   * The record's bytes [from, to) in chunks of at most 1 MiB, each valid only until the next
   * is taken (one buffer is reused). Reading the whole record checks its CRC-32 after its
   * last chunk.
   */
  *chunks(entry: ZipEntry, from = 0, to = entry.size): Generator<Uint8Array> {
    if (from < 0 || to > entry.size || from > to) throw new RangeError(`record ${entry.name}: bytes [${from}, ${to}) of ${entry.size}`);
    const whole = from === 0 && to === entry.size && !this.verified.has(entry);
    const buf = (this.chunkBuffer ??= new Uint8Array(STREAM_CHUNK_BYTES));
    let crc = 0;
    for (let at = from; at < to; ) {
      const want = Math.min(buf.length, to - at);
      const n = this.src.readInto(entry.dataOffset + at, buf.subarray(0, want));
      if (n !== want) this.fail(`record ${entry.name}: truncated (the file shrank while it was read)`);
      const chunk = buf.subarray(0, n);
      if (whole) crc = crc32(chunk, crc);
      at += n;
      yield chunk;
    }
    if (whole) this.checkCrc(entry, crc >>> 0);
  }

  /** Checks the CRC-32 of every record not yet read whole. */
  verifyUnread(): void {
    for (const entry of this.entries) {
      if (this.verified.has(entry)) continue;
      if (entry.size <= STREAM_CHUNK_BYTES) this.data(entry);
      else for (const _ of this.chunks(entry));
    }
  }

  private checkCrc(entry: ZipEntry, actual: number): void {
    if (actual !== entry.crc32) {
      this.fail(`record ${entry.name}: CRC-32 mismatch (stored ${hex(entry.crc32)}, computed ${hex(actual)}); the file is corrupt`);
    }
    this.verified.add(entry);
  }

  private parse(): void {
    const len = this.src.size;
    if (len === 0) this.fail("file is empty (expected a PyTorch zip archive)");
    const head = this.src.read(0, 4);
    if (head.length >= 2 && head[0] === 0x80 && head[1]! <= 5) {
      this.fail("legacy (pre-1.6, non-zip) torch.save format is not supported; re-save it with torch.save in torch >= 1.6");
    }
    if (len < 4 || new DataView(head.buffer, head.byteOffset, 4).getUint32(0, true) !== SIG_LOCAL) {
      this.fail("not a zip archive (PyTorch checkpoints since 1.6 are zip files starting with PK\\x03\\x04)");
    }
    // End of central directory: the last 22 bytes, unless an archive comment follows it.
    // The tail read holds it, its comment and the ZIP64 locator before it.
    const tailStart = Math.max(0, len - EOCD_SIZE - U16_MAX - ZIP64_LOCATOR_SIZE);
    const tail = this.src.read(tailStart, len - tailStart);
    const tv = new DataView(tail.buffer, tail.byteOffset, tail.byteLength);
    let eocd = -1; // in tail
    for (let p = tail.length - EOCD_SIZE; p >= Math.max(0, tail.length - EOCD_SIZE - U16_MAX); p--) {
      if (tv.getUint32(p, true) === SIG_EOCD && tailStart + p + EOCD_SIZE + tv.getUint16(p + 20, true) === len) {
        eocd = p;
        break;
      }
    }
    if (eocd < 0) this.fail("truncated or not a zip archive (no end-of-central-directory record)");
    if (tv.getUint16(eocd + 4, true) !== 0 || tv.getUint16(eocd + 6, true) !== 0) {
      this.fail("multi-disk zip archives are not supported");
    }
    let count = tv.getUint16(eocd + 10, true);
    let cdSize = tv.getUint32(eocd + 12, true);
    let cdOffset = tv.getUint32(eocd + 16, true);
    let cdEnd = tailStart + eocd;
    const loc = eocd - ZIP64_LOCATOR_SIZE;
    if (loc >= 0 && tv.getUint32(loc, true) === SIG_ZIP64_LOCATOR) {
      const z = readU64(tv, loc + 8, "ZIP64 end record offset", (m) => this.fail(m));
      const rec = z + ZIP64_EOCD_SIZE <= tailStart + loc ? this.src.read(z, ZIP64_EOCD_SIZE) : new Uint8Array(0);
      const zv = new DataView(rec.buffer, rec.byteOffset, rec.byteLength);
      if (rec.length < ZIP64_EOCD_SIZE || zv.getUint32(0, true) !== SIG_ZIP64_EOCD) {
        this.fail("corrupt ZIP64 end-of-central-directory record");
      }
      if (zv.getUint32(16, true) !== 0 || zv.getUint32(20, true) !== 0) {
        this.fail("multi-disk zip archives are not supported");
      }
      count = readU64(zv, 32, "entry count", (m) => this.fail(m));
      cdSize = readU64(zv, 40, "central directory size", (m) => this.fail(m));
      cdOffset = readU64(zv, 48, "central directory offset", (m) => this.fail(m));
      cdEnd = z;
    }
    if (cdOffset + cdSize > cdEnd) {
      this.fail(`corrupt central directory (offset ${cdOffset} + size ${cdSize} runs past byte ${cdEnd}); the file may be truncated`);
    }

    // The central directory (its size is bounded by the file's; real ones are a few KiB).
    const cd = this.src.read(cdOffset, cdSize);
    const view = new DataView(cd.buffer, cd.byteOffset, cd.byteLength);
    const decoder = new TextDecoder("utf-8");
    let p = 0; // in cd
    for (let i = 0; i < count; i++) {
      if (p + CENTRAL_HEADER_SIZE > cdSize || view.getUint32(p, true) !== SIG_CENTRAL) {
        this.fail(`corrupt central directory entry ${i} at byte ${cdOffset + p}`);
      }
      const flags = view.getUint16(p + 8, true);
      const method = view.getUint16(p + 10, true);
      const crc = view.getUint32(p + 16, true);
      let comp = view.getUint32(p + 20, true);
      let size = view.getUint32(p + 24, true);
      const nameLen = view.getUint16(p + 28, true);
      const extraLen = view.getUint16(p + 30, true);
      const commentLen = view.getUint16(p + 32, true);
      let offset = view.getUint32(p + 42, true);
      const next = p + CENTRAL_HEADER_SIZE + nameLen + extraLen + commentLen;
      if (next > cdSize) this.fail(`corrupt central directory entry ${i} (runs past the directory)`);
      const nameBytes = cd.subarray(p + CENTRAL_HEADER_SIZE, p + CENTRAL_HEADER_SIZE + nameLen);
      const name = decoder.decode(nameBytes);
      // ZIP64: fields set to 0xFFFFFFFF are in the extended-information extra field, in this order.
      if (size === U32_MAX || comp === U32_MAX || offset === U32_MAX) {
        let q = p + CENTRAL_HEADER_SIZE + nameLen;
        const end = q + extraLen;
        let found = false;
        while (q + 4 <= end) {
          const id = view.getUint16(q, true);
          const n = view.getUint16(q + 2, true);
          if (q + 4 + n > end) break;
          if (id === ZIP64_EXTRA_ID) {
            let r = q + 4;
            const take = (what: string): number => {
              if (r + 8 > q + 4 + n) this.fail(`record ${name}: ZIP64 field lacks the ${what}`);
              const v = readU64(view, r, what, (m) => this.fail(`record ${name}: ${m}`));
              r += 8;
              return v;
            };
            if (size === U32_MAX) size = take("size");
            if (comp === U32_MAX) comp = take("compressed size");
            if (offset === U32_MAX) offset = take("header offset");
            found = true;
            break;
          }
          q += 4 + n;
        }
        if (!found) this.fail(`record ${name}: ZIP64 sizes without a ZIP64 extra field`);
      }
      if (flags & 0x0001) this.fail(`record ${name} is encrypted`);
      if (method !== 0) this.fail(`record ${name} is compressed (method ${method}); PyTorch archives store records uncompressed`);
      if (comp !== size) this.fail(`record ${name}: stored size ${comp} differs from its size ${size}`);
      if (this.byName.has(name)) this.fail(`duplicate record ${name}`);

      // The local header gives where the data starts (its extra field differs from the central one).
      const local = offset + LOCAL_HEADER_SIZE <= cdOffset ? this.src.read(offset, LOCAL_HEADER_SIZE + nameLen) : new Uint8Array(0);
      const lv = new DataView(local.buffer, local.byteOffset, local.byteLength);
      if (local.length < LOCAL_HEADER_SIZE || lv.getUint32(0, true) !== SIG_LOCAL) {
        this.fail(`record ${name}: no local header at byte ${offset}`);
      }
      const localNameLen = lv.getUint16(26, true);
      const localExtraLen = lv.getUint16(28, true);
      const localName = local.subarray(LOCAL_HEADER_SIZE, LOCAL_HEADER_SIZE + localNameLen);
      if (localNameLen !== nameLen || localName.length !== nameLen || !localName.every((x, k) => x === nameBytes[k])) {
        this.fail(`record ${name}: local header names a different record`);
      }
      if (lv.getUint16(8, true) !== 0) this.fail(`record ${name} is compressed in its local header`);
      const dataOffset = offset + LOCAL_HEADER_SIZE + localNameLen + localExtraLen;
      if (dataOffset + size > cdOffset) {
        this.fail(`record ${name}: ${size} bytes at byte ${dataOffset} run past the records (truncated or corrupt file)`);
      }
      const entry: ZipEntry = { name, dataOffset, size, crc32: crc };
      this.entries.push(entry);
      this.byName.set(name, entry);
      p = next;
    }
    if (p !== cdSize) this.fail(`central directory has ${cdSize - p} bytes after its ${count} entries`);
  }
}

function hex(x: number): string {
  return `0x${x.toString(16).padStart(8, "0")}`;
}
