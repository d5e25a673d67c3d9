/**
 * A checkpoints folder that fills up or turns read-only mid-run: the run stops with exit 1
 * and one message naming the file, the cause and the checkpoint that is intact; every file
 * written before keeps its bytes, no temp file is left, and once the cause is gone the same
 * command resumes. The failures are real: checkpoints/ is a small tmpfs (root mounts it),
 * filled up or remounted read-only. Where mounting is not allowed, the kernel refuses the
 * writes through a file-size limit (RLIMIT_FSIZE, EFBIG) instead.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, readFileSync, rmSync, statfsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { makeTinyRepo, type TinyRepo } from "./helpers/repo.ts";
import { CLI, load, signalName, snapshot, tempFiles, type CliResult } from "./reliability-helpers.ts";

const PRETRAIN = ["--phase", "pretrain", "--config", "configs/pretrain.json", "--device", "cpu"];
const mounts: string[] = [];
const repos: TinyRepo[] = [];
afterAll(() => {
  for (const dir of mounts) Bun.spawnSync(["umount", "-l", dir]);
  for (const r of repos) rmSync(r.root, { recursive: true, force: true });
});

function sh(cmd: string[]): boolean {
  return Bun.spawnSync(cmd, { stdout: "ignore", stderr: "ignore" }).exitCode === 0;
}

/** checkpoints/ of a new tiny repo, on its own tmpfs when mounting works. */
function repoWithCheckpointDir(): { repo: TinyRepo; dir: string; tmpfs: boolean } {
  const repo = makeTinyRepo({ pretrain: { total_steps: 5, ckpt_every: 5, eval_every: 5 } });
  repos.push(repo);
  const dir = join(repo.root, "checkpoints");
  mkdirSync(dir);
  const tmpfs = sh(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", dir]);
  if (tmpfs) mounts.push(dir);
  else console.warn(`mount -t tmpfs failed (not root?): ${dir} gets a file-size limit instead`);
  return { repo, dir, tmpfs };
}

/** `train ARGS`, optionally under a file-size limit in KiB (SIGXFSZ ignored, so writes fail with EFBIG). */
function train(root: string, limitKiB?: number): CliResult {
  const limit = limitKiB === undefined ? "" : `trap '' XFSZ; ulimit -f ${limitKiB}; `;
  const p = Bun.spawnSync(["bash", "-c", `${limit}exec "$0" "$@"`, process.execPath, CLI, ...PRETRAIN], { cwd: root, stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, signal: signalName(p.signalCode), stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

function setTotalSteps(root: string, total: number): void {
  const path = join(root, "configs", "pretrain.json");
  const config = JSON.parse(readFileSync(path, "utf8"));
  config.train_cfg.total_steps = total;
  writeFileSync(path, JSON.stringify(config, null, 2));
}

function usedKiB(dir: string): number {
  const s = statfsSync(dir);
  return Math.ceil(((s.blocks - s.bfree) * s.bsize) / 1024);
}

const INTACT = "Training stopped; checkpoints/latest.pt (step 5) is intact: fix the cause and run the same command again\n";

describe("the checkpoints folder fails while saving", () => {
  test("disk full: exit 1, the file and the cause named, the earlier checkpoints byte-identical, then resume", () => {
    const { repo, dir, tmpfs } = repoWithCheckpointDir();
    expect(train(repo.root).code).toBe(0); // step 5: best.pt, step_0000005.pt, latest.pt (about 1 MB)
    const before = snapshot(dir);
    // Room for the metrics and the loss picture, not for another 340 KB checkpoint.
    if (tmpfs) expect(sh(["mount", "-o", `remount,size=${usedKiB(dir) + 100}k`, dir])).toBe(true);

    setTotalSteps(repo.root, 20);
    const full = train(repo.root, tmpfs ? undefined : 200);
    expect(full.code).toBe(1);
    const cause = tmpfs ? "no space left on device (ENOSPC)" : "file too large (EFBIG)";
    // Step 10 improves the val loss: best.pt is the first file of that save.
    expect(full.stderr).toBe(`train: cannot write ${join(dir, "best.pt")}: ${cause}; the previous file is unchanged. ${INTACT}`);
    expect(full.stdout).toContain("eval step 10/20");
    const after = snapshot(dir);
    for (const name of ["best.pt", "latest.pt", "step_0000005.pt"]) expect(after[name]).toBe(before[name]!);
    expect(Object.keys(after).filter((f) => f.endsWith(".pt")).sort()).toEqual(["best.pt", "latest.pt", "step_0000005.pt"]);
    expect(tempFiles(dir)).toEqual([]);

    if (tmpfs) expect(sh(["mount", "-o", "remount,size=8m", dir])).toBe(true);
    const resumed = train(repo.root);
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toContain("resumed from checkpoints/latest.pt at step 5");
    expect(load(join(dir, "latest.pt")).step).toBe(20);
  }, 60_000);

  test("unwritable folder: exit 1, the file and the cause named, nothing changed, then resume", () => {
    const { repo, dir, tmpfs } = repoWithCheckpointDir();
    expect(train(repo.root).code).toBe(0);
    const before = snapshot(dir);
    const root = process.getuid?.() === 0;
    // read-only tmpfs; else a folder without write permission (non-root) or a file-size limit of 0
    if (tmpfs) expect(sh(["mount", "-o", "remount,ro", dir])).toBe(true);
    else if (!root) chmodSync(dir, 0o555);

    setTotalSteps(repo.root, 20);
    const refused = train(repo.root, tmpfs || !root ? undefined : 0);
    expect(refused.code).toBe(1);
    expect(refused.stderr.trim().split("\n")).toHaveLength(1);
    expect(refused.stderr).not.toContain("    at ");
    // the first write of the resumed run is the train record of step 5 in metrics.jsonl
    const cause = tmpfs ? "read-only file system (EROFS)" : root ? "file too large (EFBIG)" : "permission denied (EACCES)";
    expect(refused.stderr).toBe(`train: cannot write ${join(dir, "metrics.jsonl")}: ${cause}. ${INTACT}`);
    expect(snapshot(dir)).toEqual(before);

    if (tmpfs) expect(sh(["mount", "-o", "remount,rw", dir])).toBe(true);
    else if (!root) chmodSync(dir, 0o755);
    const resumed = train(repo.root);
    expect(resumed.code).toBe(0);
    expect(load(join(dir, "latest.pt")).step).toBe(20);
  }, 60_000);
});
