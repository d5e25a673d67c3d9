/**
 * .github/workflows/ci.yml cannot run here, so it is checked here: against GitHub's own
 * workflow schema and the semantic checks of its parser (npm @actions/workflow-parser, from
 * GitHub's Actions language services: keys, value types, expressions, the job graph), and
 * for what issue 17 asks of it: npm test on Linux and on an arm64 Mac with a PyTorch, a
 * report of whether the MPS tests ran, and on a v* tag only the executables of
 * `npm run release` for every target, uploaded to the tag's release.
 */
import { describe, expect, test } from "bun:test";
import { convertWorkflowTemplate, NoOperationTraceWriter, parseWorkflow } from "@actions/workflow-parser";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { TARGETS } from "../scripts/build-native.ts";

const ROOT = join(import.meta.dir, "..");
const WORKFLOW_PATH = join(ROOT, ".github", "workflows", "ci.yml");
const WORKFLOW_TEXT = readFileSync(WORKFLOW_PATH, "utf8");
const SCRIPTS: Record<string, string> = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).scripts;

/** GitHub's schema and parser errors for a workflow's text ([] when valid), each with its line. */
async function workflowErrors(content: string): Promise<string[]> {
  const parsed = parseWorkflow({ name: "ci.yml", content }, new NoOperationTraceWriter());
  const errors = parsed.context.errors.getErrors().map((e) => e.message);
  if (errors.length === 0 && parsed.value) {
    const template = await convertWorkflowTemplate(parsed.context, parsed.value);
    errors.push(...(template.errors ?? []).map((e) => e.Message));
  }
  return errors;
}

interface Step { name?: string; id?: string; uses?: string; run?: string; if?: string; env?: Record<string, string>; with?: Record<string, string> }
interface Job { "runs-on": string; container?: string; needs?: string[]; if?: string; permissions?: Record<string, string>; steps: Step[] }
const workflow = Bun.YAML.parse(WORKFLOW_TEXT) as { on: { push: { tags: string[] } }; jobs: Record<string, Job> };
const jobs = workflow.jobs;
const runs = (job: Job) => job.steps.flatMap((s) => (s.run ? [s.run] : []));

describe(".github/workflows/ci.yml", () => {
  test("is valid against GitHub's workflow schema and parser", async () => {
    expect(await workflowErrors(WORKFLOW_TEXT)).toEqual([]);
  });

  test("the check rejects a misspelt key, a broken expression and a job that needs a missing job", async () => {
    const broken = [
      WORKFLOW_TEXT.replace("runs-on: macos-14", "runs_on: macos-14"),
      WORKFLOW_TEXT.replace("${{ github.token }}", "${{ github.token }"),
      WORKFLOW_TEXT.replace("needs: [linux, macos]", "needs: [linux, mac]"),
    ];
    for (const text of broken) expect(text).not.toBe(WORKFLOW_TEXT);
    const errors = await Promise.all(broken.map(workflowErrors));
    expect(errors[0].join("\n")).toContain("runs_on");
    expect(errors[1].join("\n")).toContain("expression is not closed");
    expect(errors[2].join("\n")).toContain("mac");
  });

  test("Linux and macos-14 (arm64) run the README's test command; the Mac's tests get a Python with torch", () => {
    expect(jobs.linux["runs-on"]).toStartWith("ubuntu-");
    // Debian, as .ci/run: setup.sh installs the release tests' cross toolchain there only; no Node in the image
    expect(jobs.linux.container).toStartWith("debian:");
    expect(jobs.linux.steps.some((s) => s.uses?.startsWith("actions/setup-node@"))).toBe(true);
    expect(runs(jobs.linux)).toContain("npm test");
    const mac = jobs.macos;
    expect(mac["runs-on"]).toBe("macos-14");
    const python = mac.steps.find((s) => s.uses?.startsWith("actions/setup-python@"));
    expect(python?.id).toBeDefined();
    expect(runs(mac).some((r) => /pip install .*\btorch\b/.test(r))).toBe(true);
    const npmTest = mac.steps.find((s) => s.run === "npm test");
    // tests/helpers/torch.ts takes the interpreter from TRAIN_TEST_PYTHON.
    expect(npmTest?.env?.TRAIN_TEST_PYTHON).toBe(`\${{ steps.${python?.id}.outputs.python-path }}`);
    expect(readFileSync(join(ROOT, "tests", "helpers", "torch.ts"), "utf8")).toContain("process.env.TRAIN_TEST_PYTHON");
  });

  test("the Mac's MPS report step counts the MPS tests (the step run here: off macOS the MPS tests skip)", () => {
    const report = jobs.macos.steps.find((s) => s.run?.includes("tests/mps.test.ts"));
    expect(report?.if).toBe("always()");
    const dir = mkdtempSync(join(tmpdir(), "train-workflow-"));
    try {
      const summary = join(dir, "summary.md");
      writeFileSync(join(dir, "sw_vers"), "#!/bin/sh\necho 14.0\n", { mode: 0o755 }); // macOS's version command
      const p = Bun.spawnSync(["bash", "-eo", "pipefail", "-c", report!.run!], {
        cwd: ROOT,
        env: { ...process.env, PATH: `${dir}:${process.env.PATH}`, GITHUB_STEP_SUMMARY: summary, RUNNER_TEMP: dir },
        stdout: "pipe",
        stderr: "pipe",
      });
      expect(p.exitCode).toBe(0);
      const line = readFileSync(summary, "utf8").trim();
      // The counts are bun test's own closing counts of the same run; off macOS every MPS test skips.
      const log = readFileSync(join(dir, "mps.log"), "utf8");
      const closing = (word: string) => Number(new RegExp(`^ *(\\d+) ${word}$`, "m").exec(log)?.[1] ?? 0);
      expect(line).toEndWith(`: ${closing("pass")} passed, ${closing("fail")} failed, ${closing("skip")} skipped`);
      expect(closing("fail")).toBe(0);
      if (process.platform !== "darwin") expect(closing("skip")).toBeGreaterThan(0);
      expect(p.stdout.toString()).toContain("::notice title=MPS tests::");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  test("on a v* tag only: the Mac builds darwin-arm64, a Debian job the Linux targets, and one release gets every target with one SHA256SUMS", () => {
    const onTag = "startsWith(github.ref, 'refs/tags/v')";
    expect(workflow.on.push.tags).toEqual(["v*"]);
    const releaseRuns = (job: Job) => job.steps.filter((s) => s.run?.includes("npm run release"));
    const targetsOf = (job: Job) => releaseRuns(job).flatMap((s) => /--target (\S+)/.exec(s.run!)?.[1]?.split(",") ?? []);

    const macRelease = releaseRuns(jobs.macos);
    expect(macRelease.map((s) => s.if)).toEqual([onTag]);
    const upload = jobs.macos.steps.find((s) => s.uses?.startsWith("actions/upload-artifact@"));
    expect(upload?.if).toBe(onTag);

    const release = jobs.release;
    expect(release.if).toBe(onTag);
    expect([...(release.needs ?? [])].sort()).toEqual(["linux", "macos"]);
    expect(release.permissions?.contents).toBe("write");
    expect(release.container).toStartWith("debian:"); // setup.sh installs the cross toolchain on Debian only
    expect(release.steps.some((s) => s.uses?.startsWith("actions/setup-node@"))).toBe(true);
    const download = release.steps.find((s) => s.uses?.startsWith("actions/download-artifact@"));
    expect(download?.with?.name).toBe(upload?.with?.name);
    // every target scripts/release.ts knows is built by one of the two jobs, none twice
    expect([...targetsOf(jobs.macos), ...targetsOf(release)].sort()).toEqual([...TARGETS].sort());
    expect(runs(release).some((r) => r.includes("sha256sum -c SHA256SUMS"))).toBe(true);
    expect(runs(release).some((r) => r.startsWith("gh release create") && r.includes("dist/release/*"))).toBe(true);
  });

  test("the release's SHA256SUMS step (run here on stand-in files) lists every executable and fails on a corrupted one", () => {
    const merge = jobs.release.steps.find((s) => s.run?.includes("sha256sum -c SHA256SUMS"))!.run!;
    const dir = mkdtempSync(join(tmpdir(), "train-workflow-"));
    try {
      const lay = (sub: string, file: string, bytes: string) => {
        mkdirSync(join(dir, "dist", sub), { recursive: true });
        writeFileSync(join(dir, "dist", sub, file), bytes);
        const sum = new Bun.CryptoHasher("sha256").update(bytes).digest("hex");
        writeFileSync(join(dir, "dist", sub, "SHA256SUMS"), `${sum}  ${file}\n`, { flag: "a" });
      };
      lay("release", "train-linux-x64", "linux executable");
      lay("release-darwin", "train-darwin-arm64", "darwin executable");
      const runStep = () => Bun.spawnSync(["bash", "-eo", "pipefail", "-c", merge], { cwd: dir, stdout: "pipe", stderr: "pipe" });
      const ok = runStep();
      expect(ok.exitCode).toBe(0);
      const sums = readFileSync(join(dir, "dist", "release", "SHA256SUMS"), "utf8");
      expect(sums.trim().split("\n").map((l) => l.split("  ")[1]).sort()).toEqual(["train-darwin-arm64", "train-linux-x64"]);
      rmSync(join(dir, "dist", "release"), { recursive: true });
      lay("release", "train-linux-x64", "linux executable");
      writeFileSync(join(dir, "dist", "release-darwin", "train-darwin-arm64"), "darwin executablE"); // changed in transfer
      const bad = runStep();
      expect(bad.exitCode).not.toBe(0);
      expect(bad.stdout.toString() + bad.stderr.toString()).toContain("train-darwin-arm64: FAILED");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  const npmScripts = [...new Set([...WORKFLOW_TEXT.matchAll(/\bnpm (?:run (\S+)|(test))\b/g)].map((m) => m[1] ?? m[2]))];
  test("every npm script the workflow runs exists in package.json", () => {
    expect(npmScripts).toEqual(expect.arrayContaining(["test", "release"]));
    for (const script of npmScripts) expect(SCRIPTS[script!]).toBeString();
  });
});
