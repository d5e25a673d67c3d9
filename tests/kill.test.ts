/**
 * Never lose a run: `train` SIGKILLed at 20 seeded random moments (half of them right
 * as a checkpoint temp file appears, i.e. in the middle of a write), resumed with the same
 * command after each, ends with checkpoints equal to an uninterrupted run's to the byte.
 * After every kill each file under a final name loads; temp files left by a kill are never
 * read and are removed by the next run; metrics.jsonl, less its wall-clock fields, equals the
 * uninterrupted run's record for record. Then a pipeline stopped during SFT (Ctrl-C, and
 * SIGKILL) and run again continues where it stopped and ends as an uninterrupted one, metrics too.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { basename, join, relative } from "node:path";
import { readMetrics } from "../src/train/metrics.ts";
import { makeTinyRepo } from "./helpers/repo.ts";
import { CLI, cli, finalCheckpoints, LiveRun, load, sameState, seededRandom, tempFiles } from "./reliability-helpers.ts";


/** The .pt files under dir, relative name -> bytes. */
function checkpointBytes(dir: string): Map<string, Buffer> {
  return new Map(finalCheckpoints(dir).map((p) => [relative(dir, p), readFileSync(p)]));
}

function expectSameCheckpoints(dir: string, referenceDir: string): void {
  const got = checkpointBytes(dir);
  const want = checkpointBytes(referenceDir);
  expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
  for (const [name, bytes] of want) expect({ name, same: got.get(name)!.equals(bytes) }).toEqual({ name, same: true });
}

/** The records of dir/metrics.jsonl less their wall-clock fields (time, wall_time_s, tokens_per_s). */
function metricsLessClock(dir: string): object[] {
  return readMetrics(join(dir, "metrics.jsonl")).map(({ time: _t, wall_time_s: _w, tokens_per_s: _r, ...rest }) => rest);
}

function expectSameMetrics(dir: string, referenceDir: string): void {
  const want = metricsLessClock(referenceDir);
  expect(want.length).toBeGreaterThan(0);
  expect(metricsLessClock(dir)).toEqual(want);
}

const PT_TEMP = /^\..+\.pt\.\d+\.\d+(\.\d+)?\.tmp$/;

describe("SIGKILL at 20 random moments", () => {
  test("resumed after each kill, the run ends byte-identical to an uninterrupted one; no torn file under a final name", async () => {
    const STEPS = 160;
    const options = { pretrain: { total_steps: STEPS, ckpt_every: 2, eval_every: 4, log_every: 10 } };
    const args = ["--phase", "pretrain", "--config", "configs/pretrain.json", "--device", "cpu"];

    // The uninterrupted run, timed: where the first checkpoint comes, how long a step takes.
    const reference = makeTinyRepo(options);
    const timed = new LiveRun(args, reference.root);
    await timed.waitFor(/checkpoint step\s+2\//);
    const firstCheckpointMs = performance.now() - timed.started;
    const done = await timed.finish();
    expect(done.code).toBe(0);
    const stepMs = (performance.now() - timed.started - firstCheckpointMs) / (STEPS - 2);

    const killed = makeTinyRepo(options);
    const dir = join(killed.root, "checkpoints");
    const random = seededRandom(20240607);
    let midWrite = 0;
    const resumedAt: number[] = [];
    for (let kill = 0; kill < 20; kill++) {
      // Even kills: a random moment from late in the start-up to 10 steps past it. Odd kills: as
      // the n-th checkpoint temp file of the run appears (n = 1..6). Both kill by the 8th temp
      // file at the latest (a save writes 2 or 3 files every 2 steps): 20 kills cannot finish.
      const deadline = kill % 2 === 0 ? firstCheckpointMs * (0.3 + 0.7 * random()) + 10 * stepMs * random() : Infinity;
      const temps = kill % 2 === 0 ? 8 : 1 + Math.floor(random() * 6);
      const tempsBefore = new Set(tempFiles(dir));
      const proc = Bun.spawn([process.execPath, CLI, ...args], { cwd: killed.root, stdout: "ignore", stderr: "pipe" });
      const t0 = performance.now();
      const seen = new Set<string>();
      while (seen.size < temps && performance.now() - t0 < deadline && proc.exitCode === null) {
        if (existsSync(dir)) for (const f of readdirSync(dir)) if (PT_TEMP.test(f) && !tempsBefore.has(f)) seen.add(f);
        if (performance.now() - t0 > 30_000) throw new Error(`kill ${kill}: no ${temps} checkpoint writes within 30 s`);
        await new Promise((resolve) => setImmediate(resolve));
      }
      proc.kill("SIGKILL");
      await proc.exited;
      if (proc.signalCode !== "SIGKILL") {
        throw new Error(`kill ${kill}: the run ended by itself (exit ${proc.exitCode}): ${await new Response(proc.stderr).text()}`);
      }

      // Every checkpoint under a final name is whole; temp files may be left.
      for (const f of finalCheckpoints(dir)) expect(() => load(f)).not.toThrow();
      if (tempFiles(dir).some((f) => !tempsBefore.has(f) && PT_TEMP.test(basename(f)))) midWrite++;
      resumedAt.push(existsSync(join(dir, "latest.pt")) ? load(join(dir, "latest.pt")).step : 0);
    }
    console.log(`kill test: step ${stepMs.toFixed(1)} ms, first checkpoint at ${firstCheckpointMs.toFixed(0)} ms; ` +
      `latest.pt after each kill: ${resumedAt.join(" ")}; ${midWrite} kills left a checkpoint temp file`);
    expect(resumedAt[19]).toBeLessThan(STEPS);
    expect(resumedAt.filter((s) => s % 10 !== 0).length).toBeGreaterThan(0); // resumes between two log lines (log_every 10)

    const last = cli(args, killed.root);
    expect(last.code).toBe(0);
    expect(tempFiles(dir)).toEqual([]); // the leftovers of the kills were removed, never read
    expect(sameState(load(join(dir, "latest.pt")), load(join(reference.root, "checkpoints", "latest.pt")))).toBe(true);
    expectSameCheckpoints(dir, join(reference.root, "checkpoints"));
    expectSameMetrics(dir, join(reference.root, "checkpoints"));
  }, 120_000);
});

describe("a pipeline stopped during SFT, run again", () => {
  const options = {
    sft: true,
    pretrain: { total_steps: 20, ckpt_every: 5, eval_every: 5 },
    // log_every 40: the checkpoints at 50, 100, 150 fall between two log lines
    sftTrain: { total_steps: 200, ckpt_every: 50, eval_every: 25, log_every: 40 },
  };
  const args = ["--phase", "pipeline", "--config", "configs/pipeline.json", "--device", "cpu"];
  let referenceDir: string | null = null;
  const uninterrupted = (): string => {
    if (referenceDir === null) {
      const r = makeTinyRepo(options);
      expect(cli(args, r.root).code).toBe(0);
      referenceDir = join(r.root, "checkpoints");
    }
    return referenceDir;
  };

  test.each(["SIGINT", "SIGKILL"] as const)("%s: continues where it stopped; best.pt, latest.pt and the pretrain checkpoints as uninterrupted", async (signal) => {
    const reference = uninterrupted();
    const r = makeTinyRepo(options);
    const run = new LiveRun(args, r.root);
    await run.waitFor(/\[sft\] checkpoint step\s+50\/200/);
    run.signal(signal);
    const stopped = await run.finish();
    if (signal === "SIGINT") expect(stopped.code).toBe(130);
    else expect(stopped.signal).toBe("SIGKILL");
    const step = load(join(r.root, "checkpoints", "latest.pt")).step;
    expect(step).toBeGreaterThanOrEqual(50);
    expect(step).toBeLessThan(200);

    const again = cli(args, r.root);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain("pretrain: already finished");
    expect(again.stdout).toContain(`sft: resumed from checkpoints/latest.pt at step ${step}`);
    for (const name of ["best.pt", "latest.pt"]) {
      expect(readFileSync(join(r.root, "checkpoints", name)).equals(readFileSync(join(reference, name)))).toBe(true);
    }
    expectSameCheckpoints(join(r.root, "checkpoints"), reference);
    expectSameMetrics(join(r.root, "checkpoints"), reference);
  }, 60_000);
});
