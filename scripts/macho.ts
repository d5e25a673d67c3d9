/**
 * Reads a thin 64-bit Mach-O file (macOS executable or dylib) and verifies its code
 * signature without a Mac, for scripts/release.ts and tests/release.test.ts.
 *
 *   bun scripts/macho.ts FILE...     prints cpu, type, minos and the signature check of each;
 *                                    exit 1 when one is not a valid signed arm64/x86_64 Mach-O
 *
 * The format (Apple's public headers: mach-o/loader.h, and the code signing blobs of
 * xnu's osfmk/kern/cs_blobs.h):
 * - mach_header_64 (little-endian), then `ncmds` load commands of `cmdsize` bytes each;
 *   LC_SEGMENT_64 lists sections, LC_BUILD_VERSION carries the minimum OS (minos, X.Y.Z
 *   packed as X<<16 | Y<<8 | Z), LC_CODE_SIGNATURE points (dataoff, datasize) at the
 *   signature at the end of __LINKEDIT.
 * - The signature (big-endian) is a SuperBlob: an index of (slot type, offset) to blobs.
 *   Slot 0 (and 0x1000.. for alternates) holds a CodeDirectory: one hash per page
 *   (2^pageSize bytes) of the file up to codeLimit (= where the signature starts), and
 *   "special slots" at negative indices holding the hashes of the other blobs (slot -2
 *   the requirements blob, -5 the entitlements, -7 the DER entitlements).
 * - An ad-hoc signature (CS_ADHOC flag) has no certificate: its CMS slot is absent or
 *   empty. Arm64 macOS runs a binary only if such hashes are valid; checking every code
 *   page and special slot is what the kernel (code page by code page) and codesign do.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";

export class MachOError extends Error {
  override name = "MachOError";
}

const MH_MAGIC_64 = 0xfeedfacf;
const FAT_MAGIC = 0xcafebabe;
const LC_SEGMENT_64 = 0x19;
const LC_CODE_SIGNATURE = 0x1d;
const LC_VERSION_MIN_MACOSX = 0x24;
const LC_BUILD_VERSION = 0x32;
const CPU_NAMES: Record<number, string> = { 0x0100000c: "arm64", 0x01000007: "x86_64" };
const FILE_TYPES: Record<number, string> = { 2: "execute", 6: "dylib", 8: "bundle" };
const PLATFORMS: Record<number, string> = { 1: "macos", 2: "ios", 6: "maccatalyst" };

const CSMAGIC_EMBEDDED_SIGNATURE = 0xfade0cc0;
const CSMAGIC_CODEDIRECTORY = 0xfade0c02;
const CSMAGIC_BLOBWRAPPER = 0xfade0b01; // the CMS signature (empty when ad-hoc)
const CSSLOT_CODEDIRECTORY = 0;
const CSSLOT_ALTERNATE_CODEDIRECTORIES = 0x1000;
const CSSLOT_SIGNATURESLOT = 0x10000;
const CS_ADHOC = 0x2;
/** CodeDirectory hashType -> node:crypto algorithm and digest length (a truncated SHA-256 keeps 20 bytes). */
const HASHES: Record<number, { name: string; algorithm: string; size: number }> = {
  1: { name: "sha1", algorithm: "sha1", size: 20 },
  2: { name: "sha256", algorithm: "sha256", size: 32 },
  3: { name: "sha256-truncated", algorithm: "sha256", size: 20 },
  4: { name: "sha384", algorithm: "sha384", size: 48 },
};

export interface Section {
  segment: string;
  name: string;
  /** File offset and size of the section's bytes. */
  offset: number;
  size: number;
}

export interface CodeDirectory {
  /** Slot of the SuperBlob it came from (0, or 0x1000+ for an alternate). */
  slot: number;
  version: number;
  flags: number;
  identifier: string;
  hash: string;
  pageSize: number;
  codeLimit: number;
  codeSlots: number;
  /** Indices of the code pages whose hash does not match the file. */
  badPages: number[];
  /** Special slots (as positive numbers: 2 = requirements...) whose hash does not match their blob. */
  badSpecialSlots: number[];
}

export interface Signature {
  offset: number;
  size: number;
  adhoc: boolean;
  codeDirectories: CodeDirectory[];
  /** Everything wrong with the signature; empty when it is valid. */
  problems: string[];
}

export interface MachO {
  cpu: string;
  fileType: string;
  platform: string | null;
  /** Minimum OS version ("13.0", "12.0.1"), from LC_BUILD_VERSION or LC_VERSION_MIN_MACOSX. */
  minos: string | null;
  sdk: string | null;
  sections: Section[];
  signature: Signature | null;
}

/** X.Y.Z packed as xxxx.yy.zz nibbles, printed as X.Y or X.Y.Z. */
function version(v: number): string {
  const patch = v & 0xff;
  return `${v >>> 16}.${(v >>> 8) & 0xff}${patch ? `.${patch}` : ""}`;
}

function cString(buf: Uint8Array, start: number, max: number): string {
  let end = start;
  while (end < start + max && end < buf.length && buf[end] !== 0) end++;
  return new TextDecoder().decode(buf.subarray(start, end));
}

/** Parses the header, load commands and (when present) verifies the code signature. */
export function readMachO(buf: Uint8Array): MachO {
  if (buf.length < 32) throw new MachOError(`${buf.length} bytes: too short for a Mach-O header (32 bytes)`);
  const le = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const magic = le.getUint32(0, true);
  if (le.getUint32(0, false) === FAT_MAGIC) throw new MachOError("a universal (fat) binary: only thin 64-bit Mach-O files are read");
  if (magic !== MH_MAGIC_64) throw new MachOError(`magic 0x${magic.toString(16)} is not a 64-bit little-endian Mach-O (0xfeedfacf)`);
  const cputype = le.getUint32(4, true);
  const filetype = le.getUint32(12, true);
  const ncmds = le.getUint32(16, true);
  const sizeofcmds = le.getUint32(20, true);
  if (32 + sizeofcmds > buf.length) throw new MachOError(`load commands (${sizeofcmds} bytes) run past the end of the file`);

  const out: MachO = {
    cpu: CPU_NAMES[cputype] ?? `cputype 0x${cputype.toString(16)}`,
    fileType: FILE_TYPES[filetype] ?? `filetype ${filetype}`,
    platform: null,
    minos: null,
    sdk: null,
    sections: [],
    signature: null,
  };
  let codeSignature: { offset: number; size: number } | null = null;
  let at = 32;
  for (let i = 0; i < ncmds; i++) {
    if (at + 8 > 32 + sizeofcmds) throw new MachOError(`load command ${i} starts past sizeofcmds`);
    const cmd = le.getUint32(at, true);
    const cmdsize = le.getUint32(at + 4, true);
    if (cmdsize < 8 || at + cmdsize > 32 + sizeofcmds) throw new MachOError(`load command ${i} (0x${cmd.toString(16)}) has a bad size ${cmdsize}`);
    if (cmd === LC_SEGMENT_64) {
      const segment = cString(buf, at + 8, 16);
      const nsects = le.getUint32(at + 64, true);
      if (72 + nsects * 80 > cmdsize) throw new MachOError(`segment ${segment}: ${nsects} sections do not fit its load command`);
      for (let s = 0; s < nsects; s++) {
        const sec = at + 72 + s * 80;
        out.sections.push({
          segment: cString(buf, sec + 16, 16),
          name: cString(buf, sec, 16),
          offset: le.getUint32(sec + 48, true),
          size: Number(le.getBigUint64(sec + 40, true)),
        });
      }
    } else if (cmd === LC_BUILD_VERSION) {
      const p = le.getUint32(at + 8, true);
      out.platform = PLATFORMS[p] ?? `platform ${p}`;
      out.minos = version(le.getUint32(at + 12, true));
      out.sdk = version(le.getUint32(at + 16, true));
    } else if (cmd === LC_VERSION_MIN_MACOSX) {
      out.platform = "macos";
      out.minos = version(le.getUint32(at + 8, true));
      out.sdk = version(le.getUint32(at + 12, true));
    } else if (cmd === LC_CODE_SIGNATURE) {
      codeSignature = { offset: le.getUint32(at + 8, true), size: le.getUint32(at + 12, true) };
    }
    at += cmdsize;
  }
  if (codeSignature) out.signature = verifySignature(buf, codeSignature.offset, codeSignature.size);
  return out;
}

/** Checks the SuperBlob at [offset, offset + size): every CodeDirectory's page and special-slot hashes. */
function verifySignature(buf: Uint8Array, offset: number, size: number): Signature {
  const sig: Signature = { offset, size, adhoc: false, codeDirectories: [], problems: [] };
  if (offset + size > buf.length || size < 12) {
    sig.problems.push(`LC_CODE_SIGNATURE points at bytes ${offset}..${offset + size} of a ${buf.length}-byte file`);
    return sig;
  }
  const be = new DataView(buf.buffer, buf.byteOffset + offset, size);
  if (be.getUint32(0) !== CSMAGIC_EMBEDDED_SIGNATURE) {
    sig.problems.push(`the signature's magic is 0x${be.getUint32(0).toString(16)}, not an embedded signature SuperBlob (0xfade0cc0)`);
    return sig;
  }
  const count = be.getUint32(8);
  if (12 + count * 8 > size) {
    sig.problems.push(`the SuperBlob's index (${count} entries) runs past the signature`);
    return sig;
  }
  const blobs = new Map<number, Uint8Array>(); // slot type -> the whole blob (magic, length, body)
  for (let i = 0; i < count; i++) {
    const type = be.getUint32(12 + i * 8);
    const at = be.getUint32(16 + i * 8);
    const length = at + 8 <= size ? be.getUint32(at + 4) : 0;
    if (at + 8 > size || length < 8 || at + length > size) {
      sig.problems.push(`blob of slot 0x${type.toString(16)} at ${at} lies outside the signature`);
      continue;
    }
    blobs.set(type, buf.subarray(offset + at, offset + at + length));
  }
  const cdSlots = [...blobs.keys()].filter((t) => t === CSSLOT_CODEDIRECTORY || (t >= CSSLOT_ALTERNATE_CODEDIRECTORIES && t < CSSLOT_ALTERNATE_CODEDIRECTORIES + 5));
  if (cdSlots.length === 0) sig.problems.push("the signature has no CodeDirectory");
  for (const slot of cdSlots) {
    const cd = verifyCodeDirectory(buf, blobs, slot, offset, sig.problems);
    if (cd) sig.codeDirectories.push(cd);
  }
  sig.adhoc = sig.codeDirectories.length > 0 && sig.codeDirectories.every((cd) => (cd.flags & CS_ADHOC) !== 0);
  const cms = blobs.get(CSSLOT_SIGNATURESLOT);
  if (sig.adhoc && cms && !(new DataView(cms.buffer, cms.byteOffset).getUint32(0) === CSMAGIC_BLOBWRAPPER && cms.length === 8)) {
    sig.problems.push("an ad-hoc signature with a non-empty CMS blob");
  }
  return sig;
}

function verifyCodeDirectory(buf: Uint8Array, blobs: Map<number, Uint8Array>, slot: number, sigOffset: number, problems: string[]): CodeDirectory | null {
  const blob = blobs.get(slot)!;
  const cd = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  const where = `CodeDirectory (slot 0x${slot.toString(16)})`;
  if (blob.length < 44 || cd.getUint32(0) !== CSMAGIC_CODEDIRECTORY) {
    problems.push(`${where}: not a CodeDirectory blob`);
    return null;
  }
  const hashOffset = cd.getUint32(16);
  const identOffset = cd.getUint32(20);
  const nSpecial = cd.getUint32(24);
  const nCode = cd.getUint32(28);
  const codeLimit = cd.getUint32(32);
  const hashSize = cd.getUint8(36);
  const hash = HASHES[cd.getUint8(37)];
  const pageShift = cd.getUint8(39);
  if (!hash || hash.size !== hashSize) {
    problems.push(`${where}: hash type ${cd.getUint8(37)} with ${hashSize}-byte hashes is not one this reader knows`);
    return null;
  }
  if (hashOffset - nSpecial * hashSize < 0 || hashOffset + nCode * hashSize > blob.length) {
    problems.push(`${where}: its ${nSpecial} special and ${nCode} code hashes lie outside the blob`);
    return null;
  }
  // a page size of 0 means one "page" covering everything up to codeLimit
  const pageSize = pageShift === 0 ? codeLimit : 2 ** pageShift;
  const out: CodeDirectory = {
    slot,
    version: cd.getUint32(8),
    flags: cd.getUint32(12),
    identifier: cString(blob, identOffset, blob.length - identOffset),
    hash: hash.name,
    pageSize,
    codeLimit,
    codeSlots: nCode,
    badPages: [],
    badSpecialSlots: [],
  };
  if (codeLimit !== sigOffset) problems.push(`${where}: code limit ${codeLimit} is not where the signature starts (${sigOffset})`);
  const expectedSlots = pageSize === 0 ? 0 : Math.ceil(codeLimit / pageSize);
  if (nCode !== expectedSlots) problems.push(`${where}: ${nCode} code slots for ${codeLimit} bytes in ${pageSize}-byte pages (expected ${expectedSlots})`);
  const digest = (bytes: Uint8Array) => createHash(hash.algorithm).update(bytes).digest().subarray(0, hash.size);
  for (let i = 0; i < nCode; i++) {
    const page = buf.subarray(i * pageSize, Math.min((i + 1) * pageSize, codeLimit, buf.length));
    const stored = blob.subarray(hashOffset + i * hashSize, hashOffset + (i + 1) * hashSize);
    if (!digest(page).equals(stored)) out.badPages.push(i);
  }
  // special slot k is stored k hashes before hashOffset; a blob of that type in the
  // SuperBlob must hash to it, and a slot without a blob must be empty (all zero)
  for (let k = 1; k <= nSpecial; k++) {
    const stored = blob.subarray(hashOffset - k * hashSize, hashOffset - (k - 1) * hashSize);
    const special = blobs.get(k);
    const ok = special ? digest(special).equals(stored) : stored.every((b) => b === 0);
    if (!ok) out.badSpecialSlots.push(k);
  }
  if (out.badPages.length > 0) {
    const shown = out.badPages.slice(0, 5).map((p) => `${p} (bytes ${p * pageSize}..${Math.min((p + 1) * pageSize, codeLimit)})`);
    problems.push(`${where}: ${out.badPages.length} of ${nCode} page hashes do not match: page ${shown.join(", ")}${out.badPages.length > 5 ? ", ..." : ""}`);
  }
  if (out.badSpecialSlots.length > 0) problems.push(`${where}: special slot hashes do not match: -${out.badSpecialSlots.join(", -")}`);
  return out;
}

/** The bytes of a section (e.g. __BUN,__bun, where bun build --compile puts its files). */
export function sectionBytes(buf: Uint8Array, macho: MachO, segment: string, name: string): Uint8Array | null {
  const s = macho.sections.find((x) => x.segment === segment && x.name === name);
  return s ? buf.subarray(s.offset, s.offset + s.size) : null;
}

/** One line per file: what it is, its minimum macOS, and the signature's verdict. */
export function describe(path: string, macho: MachO): string {
  const sig = macho.signature;
  const verdict = !sig
    ? "unsigned"
    : sig.problems.length > 0
      ? `INVALID signature: ${sig.problems.join("; ")}`
      : `${sig.adhoc ? "ad-hoc" : "signed"}, ${sig.codeDirectories.map((cd) => `${cd.codeSlots} ${cd.hash} page hashes valid (${cd.identifier})`).join(", ")}`;
  return `${path}: Mach-O ${macho.cpu} ${macho.fileType}, ${macho.platform ?? "no platform"} minos ${macho.minos ?? "?"}, ${verdict}`;
}

if (import.meta.main) {
  const files = process.argv.slice(2);
  if (files.length === 0) {
    console.error("usage: bun scripts/macho.ts FILE...");
    process.exit(2);
  }
  let bad = 0;
  for (const f of files) {
    try {
      const m = readMachO(readFileSync(f));
      console.log(describe(f, m));
      if (!m.signature || m.signature.problems.length > 0) bad++;
    } catch (e) {
      console.log(`${f}: ${(e as Error).message}`);
      bad++;
    }
  }
  process.exit(bad > 0 ? 1 : 0);
}
