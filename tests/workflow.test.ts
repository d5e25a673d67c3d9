/**
 * .github/workflows/ci.yml cannot run here, so it is checked here: against GitHub's own
 * workflow schema and the semantic checks of its parser (npm @actions/workflow-parser, from
 * GitHub's Actions language services: keys, value types, expressions, the job graph), and
 * for what issue 17 asks of it: npm test on Linux and on an arm64 Mac with a PyTorch, a
 * report of whether the MPS tests ran, and a release job that uploads the binaries of
 * `npm run release` on a v* tag only.
 */
import { describe, expect, test } from "bun:test";
import { convertWorkflowTemplate, NoOperationTraceWriter, parseWorkflow } from "@actions/workflow-parser";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

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
interface Job { "runs-on": string; needs?: string[]; if?: string; permissions?: Record<string, string>; steps: Step[] }
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

  test("the release job runs on v* tags only, after both test jobs, and uploads dist/release/*", () => {
    expect(workflow.on.push.tags).toEqual(["v*"]);
    const release = jobs.release;
    expect(release.if).toBe("startsWith(github.ref, 'refs/tags/v')");
    expect([...(release.needs ?? [])].sort()).toEqual(["linux", "macos"]);
    expect(release.permissions?.contents).toBe("write");
    expect(runs(release).some((r) => r.includes("npm run release"))).toBe(true);
    expect(runs(release).some((r) => r.startsWith("gh release create") && r.includes("dist/release/*"))).toBe(true);
  });

  const npmScripts = [...new Set([...WORKFLOW_TEXT.matchAll(/\bnpm (?:run (\S+)|(test))\b/g)].map((m) => m[1] ?? m[2]))];
  test.each(npmScripts.filter((s) => s !== "release"))("npm script '%s' that the workflow runs exists in package.json", (script) => {
    expect(SCRIPTS[script]).toBeString();
  });
  test.skipIf(!SCRIPTS.release)("npm script 'release' exists in package.json (skipped until issue 16's npm run release lands)", () => {
    expect(SCRIPTS.release).toBeString();
  });
});
