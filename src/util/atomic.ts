/**
 * Atomic file replacement: write a temp file next to the target, fsync it, rename it
 * over the target, fsync the folder. A reader (or a crash) sees the old file or the
 * new one, never a torn one; on failure the temp file is removed and the old file is
 * left as it was.
 */
import * as fs from "node:fs";
import { basename, dirname, join } from "node:path";

/** The file operations used (injectable, so tests can simulate failing disks). */
export interface FileIo {
  openSync(path: string, flags: string, mode?: number): number;
  writeSync(fd: number, buffer: Uint8Array, offset: number, length: number): number;
  fsyncSync(fd: number): void;
  fchmodSync(fd: number, mode: number): void;
  closeSync(fd: number): void;
  renameSync(from: string, to: string): void;
  unlinkSync(path: string): void;
  statSync(path: string): { mode: number; isFile(): boolean };
}

/** node:fs as a FileIo (tests replace single operations to inject failures). */
export const nodeIo: FileIo = {
  openSync: (p, f, m) => fs.openSync(p, f, m),
  writeSync: (fd, b, o, l) => fs.writeSync(fd, b, o, l),
  fsyncSync: (fd) => fs.fsyncSync(fd),
  fchmodSync: (fd, m) => fs.fchmodSync(fd, m),
  closeSync: (fd) => fs.closeSync(fd),
  renameSync: (a, b) => fs.renameSync(a, b),
  unlinkSync: (p) => fs.unlinkSync(p),
  statSync: (p) => fs.statSync(p),
};

/** A failed file write; the message names the file and the cause. */
export class FileWriteError extends Error {
  override name = "FileWriteError";
  constructor(message: string, readonly path: string, readonly code: string | undefined, options?: { cause?: unknown }) {
    super(message, options);
  }
}

const CAUSES: Record<string, string> = {
  ENOSPC: "no space left on device",
  EDQUOT: "disk quota exceeded",
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  EROFS: "read-only file system",
  ENOENT: "the folder does not exist",
  ENOTDIR: "a part of the path is not a folder",
  EISDIR: "the path is a folder",
  EIO: "input/output error",
  EFBIG: "file too large",
};

function errCode(e: unknown): string | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === "string" ? code : undefined;
}

/** A file-system error as words and code, e.g. "no space left on device (ENOSPC)". */
export function describeFsError(e: unknown): string {
  const code = errCode(e);
  if (code && CAUSES[code]) return `${CAUSES[code]} (${code})`;
  return (e as Error)?.message ?? String(e);
}

let tempCounter = 0;

/**
 * A file being written atomically (see above): created as a temp file next to `path`,
 * written in chunks as they come (a generator or a cache writer streams a large file
 * without assembling it), then committed (fsync, rename, fsync the folder) or aborted
 * (temp file removed). Keeps the permission bits of a file it replaces. Every failure
 * is a FileWriteError naming `path` and the cause, with the temp file removed.
 */
export class AtomicFile {
  private fd: number;

  private constructor(
    readonly path: string,
    private readonly tmp: string,
    fd: number,
    /** What the failure message says about the target: "nothing was written" or "the previous file is unchanged". */
    private readonly keep: string,
    private readonly io: FileIo,
  ) {
    this.fd = fd;
  }

  static create(path: string, io: FileIo = nodeIo): AtomicFile {
    let previousMode: number | undefined;
    try {
      const st = io.statSync(path);
      if (st.isFile()) previousMode = st.mode & 0o7777;
    } catch {
      // no previous file
    }
    const keep = previousMode === undefined ? "nothing was written" : "the previous file is unchanged";
    let tmp = "";
    let fd = -1;
    for (let attempt = 0; fd < 0; attempt++) {
      tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${++tempCounter}${attempt ? `.${attempt}` : ""}.tmp`);
      try {
        fd = io.openSync(tmp, "wx", 0o666);
      } catch (e) {
        if (errCode(e) === "EEXIST" && attempt < 100) continue;
        throw new FileWriteError(`cannot write ${path}: ${describeFsError(e)}; ${keep}`, path, errCode(e), { cause: e });
      }
    }
    const file = new AtomicFile(path, tmp, fd, keep, io);
    if (previousMode !== undefined) file.attempt(() => io.fchmodSync(fd, previousMode));
    return file;
  }

  write(chunk: Uint8Array): void {
    this.attempt(() => {
      let off = 0;
      while (off < chunk.length) off += this.io.writeSync(this.fd, chunk, off, chunk.length - off);
    });
  }

  /** Makes the written bytes the file at `path`, durably. */
  commit(): void {
    this.attempt(() => {
      this.io.fsyncSync(this.fd);
      const closing = this.fd;
      this.fd = -1;
      this.io.closeSync(closing);
      this.io.renameSync(this.tmp, this.path);
    });
    // Make the rename itself durable. Some file systems cannot fsync a folder: that is not an error.
    let dfd = -1;
    try {
      dfd = this.io.openSync(dirname(this.path), "r");
      this.io.fsyncSync(dfd);
    } catch (e) {
      const code = errCode(e);
      if (code === "EIO" || code === "ENOSPC") {
        throw new FileWriteError(`wrote ${this.path} but could not flush its folder: ${describeFsError(e)}`, this.path, code, { cause: e });
      }
    } finally {
      if (dfd >= 0) this.io.closeSync(dfd);
    }
  }

  /** Drops the temp file; the target is left as it was. Never throws. */
  abort(): void {
    if (this.fd >= 0) {
      try {
        this.io.closeSync(this.fd);
      } catch {
        // already failing; the unlink below still runs
      }
      this.fd = -1;
    }
    try {
      this.io.unlinkSync(this.tmp);
    } catch {
      // nothing more to do: the temp file name is in the message
    }
  }

  /** Aborts the write and returns the FileWriteError that says why (`cause`). */
  failure(cause: unknown): FileWriteError {
    this.abort();
    return new FileWriteError(`cannot write ${this.path}: ${describeFsError(cause)}; ${this.keep}`, this.path, errCode(cause), { cause });
  }

  private attempt(step: () => void): void {
    try {
      step();
    } catch (e) {
      throw this.failure(e);
    }
  }
}

/**
 * Thrown by a producer of chunks that refuses what it was about to write (a diverged
 * model's weights, seen while they stream): writeFileAtomic drops the temp file and
 * throws `reason` as it is, not as a failed write.
 */
export class AbandonedWrite extends Error {
  override name = "AbandonedWrite";
  constructor(readonly reason: Error) {
    super(reason.message, { cause: reason });
  }
}

/** Writes chunks to path atomically (AtomicFile). Throws FileWriteError naming path and cause (or an AbandonedWrite's reason). */
export function writeFileAtomic(path: string, chunks: Iterable<Uint8Array>, io: FileIo = nodeIo): void {
  const file = AtomicFile.create(path, io);
  try {
    for (const chunk of chunks) file.write(chunk);
  } catch (e) {
    if (e instanceof AbandonedWrite) {
      file.abort();
      throw e.reason;
    }
    throw e instanceof FileWriteError ? e : file.failure(e); // e.g. a generator of chunks that failed
  }
  file.commit();
}

/** writeFileAtomic of a text, as UTF-8 (metrics.jsonl, loss.svg, a cache's meta.json). */
export function writeTextAtomic(path: string, text: string): void {
  writeFileAtomic(path, [new TextEncoder().encode(text)]);
}

/**
 * Removes the temp files of writeFileAtomic whose writer is gone (killed mid-write):
 * `.<name>.<pid>.<n>.tmp` of a process that no longer runs. Returns the paths removed.
 */
export function removeStaleTempFiles(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  const removed: string[] = [];
  for (const name of fs.readdirSync(dir)) {
    const pid = /^\..+?\.(\d+)(?:\.\d+){0,2}\.tmp$/.exec(name)?.[1];
    if (pid === undefined || Number(pid) === process.pid || processAlive(Number(pid))) continue;
    try {
      fs.unlinkSync(join(dir, name));
      removed.push(join(dir, name));
    } catch {
      // another run removed it first, or the folder is read-only: the write itself will say
    }
  }
  return removed;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Runs a write to `path`; a failing file system becomes a FileWriteError naming the file. */
export function writingTo<T>(path: string, write: () => T): T {
  try {
    return write();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (e instanceof FileWriteError || typeof code !== "string" || !code.startsWith("E")) throw e;
    throw new FileWriteError(`cannot write ${path}: ${describeFsError(e)}`, path, code, { cause: e });
  }
}
