/**
 * `train --phase pretrain|sft|pipeline`: resolves configs, device and checkpoint folders,
 * then runs the phases. Folders (under REPO_ROOT, the folder train runs from):
 *   pretrain alone:  checkpoints/            sft alone: checkpoints/
 *   pipeline:        checkpoints/pretrain/ then checkpoints/ (best.pt = the SFT model)
 * metrics.jsonl and loss.svg live in checkpoints/ for every phase. The run's output starts with
 * the version line (src/version.ts), which metrics.jsonl records too; a run refused before it
 * starts (a bad config, cache or checkpoint) prints nothing but its error.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { defaultLibraryPath, deviceAvailable, openLibrary, tensorLimitProblem } from "../backend/native.ts";
import { runSelfTestInChild } from "../backend/selftest.ts";
import { phaseOfCheckpointFile } from "../checkpoint/checkpoint.ts";
import { CHECKPOINT_DIR, loadPhaseConfig, loadPipelineConfig, PRETRAIN_CHECKPOINT_DIR } from "../config.ts";
import { checkoutBuildInfo, versionLine } from "../version.ts";
import { chooseDevice, type DeviceProbe } from "./device.ts";
import { openPhaseData } from "./phase-data.ts";
import { movePretrainRunAside } from "./phase-handoff.ts";
import { runPhase, type PhaseOutcome } from "./phase.ts";
import { resumeCheckpoint, resumePathOf, type ResumeRequest } from "./start.ts";
import type { ProgressStream } from "./progress.ts";
import { StopOnSignals, type StopSignal } from "./stop.ts";

export interface RunRequest {
  phase: "pretrain" | "sft" | "pipeline";
  configPath: string;
  device: "mps" | "cpu" | "auto";
  resume: ResumeRequest;
}

export interface RunEnvironment {
  repoRoot: string;
  out: ProgressStream;
  /** The native library's path (the compiled executable passes its embedded copy). */
  libraryPath?: string;
  /** Stop requests (default: Ctrl-C / SIGTERM / SIGHUP handlers). */
  stop?: StopSignal;
  /** The version line of this build (default: the checkout's, src/version.ts). */
  version?: string;
  /** What decides --device auto (default: this machine's; src/train/device.ts). */
  deviceProbe?: DeviceProbe;
}

/** `out`, with `line` written before the first thing written to it. */
function startingWith(out: ProgressStream, line: string): ProgressStream {
  let started = false;
  return {
    get isTTY() {
      return out.isTTY;
    },
    get columns() {
      return out.columns;
    },
    write(chunk: string) {
      if (!started) {
        started = true;
        out.write(`${line}\n`);
      }
      return out.write(chunk);
    },
  };
}

export async function runTraining(req: RunRequest, env: RunEnvironment): Promise<number> {
  const checkpoints = join(env.repoRoot, CHECKPOINT_DIR);
  const pretrainDir = join(env.repoRoot, PRETRAIN_CHECKPOINT_DIR);
  // Configs first: a config error must not wait for (or depend on) the native library.
  const configs =
    req.phase === "pipeline"
      ? loadPipelineConfig(req.configPath, env.repoRoot)
      : { single: loadPhaseConfig(req.configPath, req.phase, env.repoRoot) };

  const library = openLibrary(env.libraryPath);
  const probe: DeviceProbe = env.deviceProbe ?? {
    mpsAvailable: deviceAvailable("mps", library),
    platform: process.platform,
    selfTest: () => runSelfTestInChild("mps", { libraryPath: env.libraryPath }),
    limitProblem: (model, B) => tensorLimitProblem(model, B, "mps", library),
  };
  const phases = "single" in configs ? [configs.single] : [configs.pretrain, configs.sft];
  const { device, note } = await chooseDevice(
    req.device,
    phases.map((c) => ({ file: c.file, model: c.model, B: c.train.B })),
    probe,
  );
  const build = env.version ?? versionLine(checkoutBuildInfo(env.libraryPath ?? defaultLibraryPath()));
  const out = startingWith(env.out, build);
  if (note !== null) out.write(`${note}\n`);
  const signals = env.stop ? null : new StopOnSignals((m) => out.write(`\n${m}\n`));
  const stop: StopSignal = env.stop ?? signals!;
  const common = { repoRoot: env.repoRoot, runDir: checkpoints, device, library, out, stop, build };
  try {
    if ("single" in configs) {
      const config = configs.single;
      if (config.phase === "sft") {
        // Checked before anything moves: the caches, and a --resume checkpoint.
        openPhaseData(config, env.repoRoot);
        if (req.resume.kind === "path") resumeCheckpoint({ config, repoRoot: env.repoRoot, checkpointDir: checkpoints, resume: req.resume });
        movePretrainRunAside({
          by: "sft",
          repoRoot: env.repoRoot,
          checkpointDir: checkpoints,
          pretrainDir,
          sft: config,
          command: `run the same train --phase sft command again`,
          startNew: true,
          print: (line) => out.write(`${line}\n`),
        });
      }
      await runPhase({
        ...common,
        config,
        checkpointDir: checkpoints,
        resume: req.resume,
        initFrom: config.phase === "sft" ? config.initFrom : null,
      });
      return 0;
    }
    // An explicit --resume applies to the phase its checkpoint belongs to (runPhase checks).
    const load = <T>(read: () => T): T => (stop.withDefaultAction ? stop.withDefaultAction(read) : read());
    const resume = req.resume;
    const resumePhase = resume.kind === "path" ? load(() => phaseOfCheckpointFile(resumePathOf(env.repoRoot, resume.path), configs.pretrain.model)) : null;
    const sftResume: ResumeRequest = resumePhase === "sft" ? req.resume : req.resume.kind === "none" ? { kind: "none" } : { kind: "auto" };
    // Before hours of pretraining: the SFT caches, and the SFT checkpoint a rerun resumes.
    load(() => openPhaseData(configs.sft, env.repoRoot));
    // A pretrain run of `--phase pretrain` in checkpoints/ goes where the pipeline keeps its
    // own, to be continued (unless the command asks for another start: --resume, --no-resume).
    load(() => openPhaseData(configs.pretrain, env.repoRoot));
    movePretrainRunAside({
      by: "pipeline",
      repoRoot: env.repoRoot,
      checkpointDir: checkpoints,
      pretrainDir,
      sft: configs.sft,
      command: "run the same train --phase pipeline command again",
      startNew: req.resume.kind === "auto",
      print: (line) => out.write(`${line}\n`),
    });
    load(() => resumeCheckpoint({ config: configs.sft, repoRoot: env.repoRoot, checkpointDir: checkpoints, resume: sftResume }));
    let pre: PhaseOutcome | null = null;
    if (resumePhase !== "sft") {
      pre = await runPhase({
        ...common,
        config: configs.pretrain,
        checkpointDir: pretrainDir,
        resume: req.resume,
        initFrom: null,
      });
    }
    // A pretrain that started over makes any older SFT checkpoint stale: SFT starts over too.
    const sftStartsOver = pre !== null && pre.freshStart && sftResume.kind === "auto";
    if (sftStartsOver && existsSync(join(checkpoints, "latest.pt"))) {
      out.write("pipeline: pretrain started over, so SFT starts over from its new best.pt (older SFT checkpoints are replaced)\n");
    }
    const pretrainBest = join(pretrainDir, "best.pt");
    if (configs.sft.initFrom !== pretrainBest) {
      out.write(`pipeline: SFT starts from the pretrain phase's ${join(PRETRAIN_CHECKPOINT_DIR, "best.pt")}; init_from in ${configs.sft.file} applies to --phase sft alone\n`);
    }
    const sft = await runPhase({
      ...common,
      config: configs.sft,
      checkpointDir: checkpoints,
      resume: sftStartsOver ? { kind: "none" } : sftResume,
      initFrom: pretrainBest,
      pretrainEnd: configs.pretrain.train.total_steps,
    });
    out.write(
      `pipeline done: pretrain best val loss ${fmt(pre?.bestValLoss)} (${join(PRETRAIN_CHECKPOINT_DIR, "best.pt")}), ` +
        `sft best val loss ${fmt(sft.bestValLoss)}; the SFT model is ${join(CHECKPOINT_DIR, "best.pt")}\n`,
    );
    return 0;
  } finally {
    signals?.dispose();
  }
}

function fmt(v: number | null | undefined): string {
  return v === null || v === undefined ? "n/a" : v.toFixed(4);
}
