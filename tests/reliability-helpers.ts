/**
 * Helpers of the reliability, kill and bad-input tests: the CLI as a subprocess (`bun
 * src/cli.ts` in a tiny REPO_ROOT), watching its output, and fingerprints of the
 * checkpoints folder.
 */
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { loadCheckpoint, type Checkpoint } from "../src/checkpoint/checkpoint.ts";

export const CLI = join(import.meta.dir, "..", "src", "cli.ts");

/** The user's environment without switches that change the output (TRAIN_DEBUG shows stacks). */
function cliEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && k !== "TRAIN_DEBUG") env[k] = v;
  return env;
}

export interface CliResult {
  code: number | null;
  signal: string | null; // the signal that ended the process, e.g. "SIGINT"
  stdout: string;
  stderr: string;
}

/** Runs `train ARGS` in cwd to the end. bunFlags: flags of bun itself (e.g. --preload F). */
export function cli(args: string[], cwd: string, bunFlags: string[] = []): CliResult {
  const p = Bun.spawnSync([process.execPath, ...bunFlags, CLI, ...args], { cwd, env: cliEnv(), stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, signal: signalName(p.signalCode), stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

export function signalName(code: string | number | null | undefined): string | null {
  return code === null || code === undefined ? null : String(code);
}

/** A running `train ARGS` whose stdout is collected as it comes; waitFor() blocks on a line. */
export class LiveRun {
  readonly proc: ReturnType<typeof Bun.spawn>;
  readonly started = performance.now();
  private out = "";
  private readonly reading: Promise<void>;

  /** launcher: a command the run is started through (e.g. ["nohup"]); bunFlags: as cli()'s. */
  constructor(args: string[], cwd: string, launcher: string[] = [], bunFlags: string[] = []) {
    const proc = Bun.spawn([...launcher, process.execPath, ...bunFlags, CLI, ...args], { cwd, env: cliEnv(), stdout: "pipe", stderr: "pipe" });
    this.proc = proc;
    this.reading = (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of proc.stdout as ReadableStream<Uint8Array>) this.out += decoder.decode(chunk, { stream: true });
    })();
  }

  get stdout(): string {
    return this.out;
  }

  /** Resolves with the first match of re in stdout; rejects after timeoutMs or when the run ends first. */
  async waitFor(re: RegExp, timeoutMs = 30_000): Promise<RegExpMatchArray> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const m = re.exec(this.out);
      if (m) return m;
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) {
        await this.reading;
        const late = re.exec(this.out);
        if (late) return late;
        throw new Error(`the run ended before printing ${re}; stdout:\n${this.out}`);
      }
      if (performance.now() > deadline) throw new Error(`no ${re} within ${timeoutMs} ms; stdout:\n${this.out}`);
      await Bun.sleep(2);
    }
  }

  signal(sig: "SIGINT" | "SIGTERM" | "SIGHUP" | "SIGKILL"): void {
    this.proc.kill(sig);
  }

  async finish(): Promise<CliResult> {
    await this.proc.exited;
    await this.reading;
    const stderr = await new Response(this.proc.stderr as ReadableStream<Uint8Array>).text();
    return { code: this.proc.exitCode, signal: signalName(this.proc.signalCode), stdout: this.out, stderr };
  }
}

/** Every file under dir (recursively), relative path -> sha256 of its bytes. */
export function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else out[relative(dir, p)] = createHash("sha256").update(readFileSync(p)).digest("hex");
    }
  };
  if (existsSync(dir)) walk(dir);
  return out;
}

/** Checkpoint files under their final names (step_*.pt, latest.pt, best.pt), recursively. */
export function finalCheckpoints(dir: string): string[] {
  return Object.keys(snapshot(dir))
    .filter((p) => /(^|\/)[^./][^/]*\.pt$/.test(p))
    .map((p) => join(dir, p));
}

/** Temp files of interrupted atomic writes (`.<name>.<pid>.<n>.tmp`), recursively. */
export function tempFiles(dir: string): string[] {
  return Object.keys(snapshot(dir)).filter((p) => /(^|\/)\.[^/]+\.tmp$/.test(p));
}

export function load(path: string): Checkpoint {
  return loadCheckpoint(path);
}

export function bytesOf(a: Float32Array): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

/** The model and optimizer state of two checkpoints are the same to the byte. */
export function sameState(a: Checkpoint, b: Checkpoint): boolean {
  return (
    a.step === b.step &&
    bytesOf(a.params).equals(bytesOf(b.params)) &&
    a.opt !== null &&
    b.opt !== null &&
    a.opt.step === b.opt.step &&
    bytesOf(a.opt.m).equals(bytesOf(b.opt.m)) &&
    bytesOf(a.opt.v).equals(bytesOf(b.opt.v))
  );
}

/** A small seeded generator (mulberry32): the same kill moments on every run of a test. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}
