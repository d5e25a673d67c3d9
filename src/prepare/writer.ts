/**
 * The one writer of token caches (prepare-data and demo-data both use it).
 * Tokens are buffered and appended to an atomic temp file (src/util/atomic.ts); close()
 * writes the SFT boundary sidecar, commits the data and writes the meta.json last, each
 * file atomically and durably, so a cache with a meta is always complete. A crash leaves
 * only temp files and no meta.
 */
import { mkdirSync, rmSync } from "node:fs";
import { basename, dirname } from "node:path";
import { AtomicFile, writeFileAtomic, writeTextAtomic } from "../util/atomic.ts";
import { DataError } from "../data/errors.ts";
import { CACHE_FORMAT, CACHE_FORMAT_VERSION, type CacheMeta, type Dtype } from "../data/meta.ts";
import type { CacheKind } from "../data/paths.ts";
import { SPECIAL_TOKENS, TOKENIZER_NAME, V_MIN } from "../data/tokenizer.ts";

export interface CacheWriterOptions {
  kind: CacheKind;
  source?: string;
  split?: string;
  /** Defaults: the byte tokenizer (src/data/tokenizer.ts). */
  vocabSize?: number;
  tokenizer?: string;
  specialTokens?: Readonly<Record<string, number>>;
  /** Default: uint16 when every id fits (vocabSize <= 65536), else uint32. */
  dtype?: Dtype;
  /** SFT boundaries in a sidecar `<bin>.idx` (default) or inline in the meta (tiny caches). */
  boundaries?: "file" | "inline";
  /** Free-form provenance stored in the meta. */
  createdBy?: string;
}

const BUFFER_TOKENS = 1 << 20;

export class CacheWriter {
  readonly binPath: string;
  private readonly opts: Required<Omit<CacheWriterOptions, "source" | "split" | "createdBy">> & CacheWriterOptions;
  private readonly bin: AtomicFile;
  private readonly buf: Uint16Array | Uint32Array | Int32Array;
  private fill = 0;
  private written = 0;
  private readonly offsets: number[] = [0];
  private closed = false;

  constructor(binPath: string, options: CacheWriterOptions) {
    const vocabSize = options.vocabSize ?? V_MIN;
    const dtype = options.dtype ?? (vocabSize <= 65536 ? "uint16" : "uint32");
    if (dtype === "uint16" && vocabSize > 65536) {
      throw new DataError(`dtype uint16 cannot hold ids of vocab_size ${vocabSize}; expected uint32 or int32`, binPath);
    }
    this.opts = {
      ...options,
      vocabSize,
      dtype,
      tokenizer: options.tokenizer ?? TOKENIZER_NAME,
      specialTokens: options.specialTokens ?? SPECIAL_TOKENS,
      boundaries: options.boundaries ?? "file",
    };
    this.binPath = binPath;
    mkdirSync(dirname(binPath), { recursive: true });
    this.bin = AtomicFile.create(binPath);
    this.buf = dtype === "uint16" ? new Uint16Array(BUFFER_TOKENS) : dtype === "uint32" ? new Uint32Array(BUFFER_TOKENS) : new Int32Array(BUFFER_TOKENS);
  }

  /** Tokens written so far (including the current, unfinished example). */
  get numTokens(): number {
    return this.written + this.fill;
  }

  /** Examples finished so far (SFT). */
  get numExamples(): number {
    return this.offsets.length - 1;
  }

  /** Appends ids (stream: to the stream; SFT: to the current example). */
  append(ids: ArrayLike<number>): void {
    this.assertOpen();
    const V = this.opts.vocabSize;
    if (ids instanceof Uint8Array && V >= 256) {
      // bytes are always in range: bulk copy
      for (let i = 0; i < ids.length; ) {
        const n = Math.min(ids.length - i, BUFFER_TOKENS - this.fill);
        this.buf.set(ids.subarray(i, i + n), this.fill);
        this.fill += n;
        i += n;
        if (this.fill === BUFFER_TOKENS) this.flush();
      }
      return;
    }
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!(id >= 0 && id < V && Number.isInteger(id))) {
        throw new DataError(`token id ${id} out of range, expected an integer in [0, ${V}) (vocab_size)`, this.binPath);
      }
      this.buf[this.fill++] = id;
      if (this.fill === BUFFER_TOKENS) this.flush();
    }
  }

  /** Ends the current SFT example (it must not be empty). */
  endExample(): void {
    this.assertOpen();
    if (this.opts.kind !== "sft") throw new DataError("endExample() on a stream cache; only SFT caches have examples", this.binPath);
    const end = this.numTokens;
    if (end === this.offsets[this.offsets.length - 1]) {
      throw new DataError(`example ${this.numExamples} is empty; expected at least one token`, this.binPath);
    }
    this.offsets.push(end);
  }

  /** append(ids) then endExample(). */
  appendExample(ids: ArrayLike<number>): void {
    this.append(ids);
    this.endExample();
  }

  /** Finishes the cache: data, sidecar, then meta (with `extra` fields). Returns the meta. */
  close(extra: Record<string, unknown> = {}): CacheMeta {
    this.assertOpen();
    const sft = this.opts.kind === "sft";
    if (sft && this.numTokens !== this.offsets[this.offsets.length - 1]) {
      throw new DataError(`unfinished example at the end (${this.numTokens - this.offsets[this.offsets.length - 1]} tokens after the last endExample())`, this.binPath);
    }
    this.flush();
    this.closed = true;
    const metaPath = `${this.binPath}.meta.json`;
    const idxPath = `${this.binPath}.idx`;
    // the old meta goes first: between the renames below the cache reads as missing, never as inconsistent
    rmSync(metaPath, { force: true });
    let boundaries: CacheMeta["boundaries"];
    if (sft && this.opts.boundaries === "file") {
      const offsets = new BigUint64Array(this.offsets.map((o) => BigInt(o)));
      try {
        writeFileAtomic(idxPath, [new Uint8Array(offsets.buffer)]);
      } catch (e) {
        this.bin.abort();
        throw e;
      }
      boundaries = { file: basename(idxPath), dtype: "uint64", count: this.offsets.length };
    } else if (sft) {
      rmSync(idxPath, { force: true });
      boundaries = [...this.offsets];
    }
    this.bin.commit();
    const meta: CacheMeta = {
      format: CACHE_FORMAT,
      version: CACHE_FORMAT_VERSION,
      kind: this.opts.kind,
      ...(this.opts.source !== undefined ? { source: this.opts.source } : {}),
      ...(this.opts.split !== undefined ? { split: this.opts.split } : {}),
      dtype: this.opts.dtype,
      num_tokens: this.numTokens,
      vocab_size: this.opts.vocabSize,
      tokenizer: this.opts.tokenizer,
      special_tokens: { ...this.opts.specialTokens },
      ...(sft ? { num_examples: this.numExamples, boundaries } : {}),
      ...(this.opts.createdBy !== undefined ? { created_by: this.opts.createdBy } : {}),
      ...extra,
    };
    writeTextAtomic(metaPath, `${JSON.stringify(meta, null, 2)}\n`);
    return meta;
  }

  /** Drops the unfinished cache (removes the temp file). */
  abort(): void {
    if (this.closed) return;
    this.closed = true;
    this.bin.abort();
  }

  private flush(): void {
    if (this.fill === 0) return;
    const bytes = new Uint8Array(this.buf.buffer, 0, this.fill * this.buf.BYTES_PER_ELEMENT);
    this.bin.write(bytes);
    this.written += this.fill;
    this.fill = 0;
  }

  private assertOpen(): void {
    if (this.closed) throw new DataError("cache writer already closed", this.binPath);
  }
}
