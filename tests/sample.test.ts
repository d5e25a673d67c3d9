/**
 * `train sample` (src/sample/): on a tiny trained pipeline, greedy decoding is
 * deterministic and matches a decode without the cache's incremental steps (a prompt pass
 * per token), seeded sampling is reproducible, --chat stops at <|eot|>, the window slides
 * past T, and every bad input exits 2 with a message naming the flag or file.
 */
import { beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { deviceAvailable, NativeModel } from "../src/backend/native.ts";
import { loadCheckpoint } from "../src/checkpoint/checkpoint.ts";
import { EOT_ID, USER_ID, ASST_ID } from "../src/data/tokenizer.ts";
import { generate } from "../src/sample/decoder.ts";
import { ensureExe, EXE } from "./helpers/exe.ts";
import { makeTinyRepo } from "./helpers/repo.ts";

const CLI = join(import.meta.dir, "..", "src", "cli.ts");

function cli(args: string[], cwd: string) {
  const p = Bun.spawnSync([process.execPath, CLI, ...args], { cwd, stdout: "pipe", stderr: "pipe" });
  return { code: p.exitCode, out: p.stdout.toString(), err: p.stderr.toString() };
}

let root = "";
let sftBest = "";
beforeAll(() => {
  const repo = makeTinyRepo({ sft: true, pretrain: { total_steps: 30, eval_every: 10, ckpt_every: 10 }, sftTrain: { total_steps: 30, eval_every: 10, ckpt_every: 10 } });
  root = repo.root;
  const r = cli(["--phase", "pipeline", "--config", "configs/pipeline.json", "--device", "cpu"], root);
  if (r.code !== 0) throw new Error(`pipeline failed: ${r.err}`);
  sftBest = join(root, "checkpoints", "best.pt");
}, 120_000);

describe("train sample", () => {
  test("greedy is deterministic, streams text, and equals decoding by full prompt passes", () => {
    const args = ["sample", "--checkpoint", sftBest, "--prompt", "add 3 and", "--temperature", "0", "--max-new-tokens", "40"];
    const a = cli(args, root);
    const b = cli(args, root);
    expect(a.err).toBe("");
    expect(a.code).toBe(0);
    expect(a.out.length).toBeGreaterThan(1);
    expect(b.out).toBe(a.out);
    // the same ids from a model that recomputes the whole window for every token
    const ck = loadCheckpoint(sftBest);
    const m = NativeModel.open(ck.modelCfg, 1);
    try {
      m.setParams(ck.params);
      const prompt = Int32Array.from(new TextEncoder().encode("add 3 and"));
      const cached = generate(m, prompt, { temperature: 0, topK: 0, seed: 0, maxNewTokens: 40 });
      const ctx = Array.from(prompt);
      const logits = new Float32Array(ck.modelCfg.V);
      const full: number[] = [];
      for (let i = 0; i < 40; i++) {
        m.decodeBegin(Int32Array.from(ctx.slice(-ck.modelCfg.T)), logits);
        let best = 0;
        for (let v = 1; v < logits.length; v++) if (logits[v]! > logits[best]!) best = v;
        full.push(best);
        ctx.push(best);
      }
      expect(cached).toEqual(full); // 9 + 40 tokens > T = 16: the window slid
    } finally {
      m.close();
    }
  });

  test("seeded sampling is reproducible, another seed differs", () => {
    const run = (seed: string) =>
      cli(["sample", "--checkpoint", sftBest, "--prompt", "add", "--temperature", "1.5", "--top-k", "50", "--seed", seed, "--max-new-tokens", "60"], root);
    const a = run("1");
    expect(a.code).toBe(0);
    expect(run("1").out).toBe(a.out);
    expect(run("2").out).not.toBe(a.out);
  });

  test("--chat wraps the prompt as a user turn and stops at <|eot|>", () => {
    const ck = loadCheckpoint(sftBest);
    const m = NativeModel.open(ck.modelCfg, 1);
    let made: number[];
    try {
      m.setParams(ck.params);
      const prompt = Int32Array.from([USER_ID, ...new TextEncoder().encode("add 2 and 3"), ASST_ID]);
      made = generate(m, prompt, { temperature: 0, topK: 0, seed: 0, maxNewTokens: 12, stopId: EOT_ID });
    } finally {
      m.close();
    }
    const r = cli(["sample", "--checkpoint", sftBest, "--prompt", "add 2 and 3", "--chat", "--temperature", "0", "--max-new-tokens", "12"], root);
    expect(r.code).toBe(0);
    const eot = made.indexOf(EOT_ID);
    // the tiny SFT model answers and ends its turn: the CLI prints the answer, not the <|eot|>, and stops there
    expect(eot).toBeGreaterThanOrEqual(0);
    expect(r.out).toBe(`${new TextDecoder().decode(Uint8Array.from(made.slice(0, eot)))}\n`);
    expect(r.out).not.toContain("<|eot|>");
  });

  test("Ctrl-C (SIGINT) ends the streamed line and exits 130", async () => {
    const p = Bun.spawn([process.execPath, CLI, "sample", "--checkpoint", sftBest, "--prompt", "add", "--max-new-tokens", "100000000", "--temperature", "1"], {
      cwd: root,
      stdout: "pipe",
      stderr: "pipe",
    });
    const reader = p.stdout.getReader();
    let out = "";
    while (out.length < 20) {
      const { value, done } = await reader.read();
      if (done) break;
      out += new TextDecoder().decode(value);
    }
    p.kill("SIGINT");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      out += new TextDecoder().decode(value);
    }
    expect(await p.exited).toBe(130);
    expect(out.length).toBeGreaterThanOrEqual(20); // it streamed before the end
    expect(out.endsWith("\n")).toBe(true);
    expect(await new Response(p.stderr).text()).toMatch(/stopped by SIGINT after \d+ tokens/);
  });

  test("the compiled executable samples with its embedded library, as the checkout does", () => {
    ensureExe();
    const args = ["sample", "--checkpoint", sftBest, "--prompt", "add 3 and", "--temperature", "0", "--max-new-tokens", "30"];
    const p = Bun.spawnSync([EXE, ...args], { cwd: root, stdout: "pipe", stderr: "pipe" });
    expect(p.stderr.toString()).toBe("");
    expect(p.exitCode).toBe(0);
    expect(p.stdout.toString()).toBe(cli(args, root).out);
  }, 300_000);

  test("without a tokenizer it reads and prints token ids, and says so", () => {
    const lone = join(root, "..", `lone-${process.pid}.pt`);
    copyFileSync(sftBest, lone);
    // --tokenizer names one: text again
    const meta = join(root, "data", "cache", "sft", "dolly_train.bin.meta.json");
    const named = cli(["sample", "--checkpoint", lone, "--tokenizer", meta, "--prompt", "add", "--temperature", "0", "--max-new-tokens", "5"], root);
    expect(named.code).toBe(0);
    expect(named.err).toBe("");
    expect(named.out).toBe(cli(["sample", "--checkpoint", sftBest, "--prompt", "add", "--temperature", "0", "--max-new-tokens", "5"], root).out);
    const r = cli(["sample", "--checkpoint", lone, "--prompt", "97 100 100", "--temperature", "0", "--max-new-tokens", "5"], root);
    expect(r.code).toBe(0);
    expect(r.err).toMatch(/no tokenizer is known .*reading and printing token ids/);
    expect(r.out.trim().split(" ").map(Number).every((v) => Number.isInteger(v) && v >= 0 && v < 264)).toBe(true);
    expect(r.out.trim().split(" ")).toHaveLength(5);
    const bad = cli(["sample", "--checkpoint", lone, "--prompt", "97 999"], root);
    expect(bad.code).toBe(2);
    expect(bad.err).toContain("--prompt: token id 999 (position 1) is unknown to the model: expected ids in [0, V=264)");
  });

  test("bad input exits 2 with a message naming the flag or file", () => {
    const long = "x".repeat(17);
    writeFileSync(join(root, "long.txt"), long);
    const cases: Array<[string[], RegExp]> = [
      [["sample"], /--checkpoint PATH is required/],
      [["sample", "--checkpoint", join(root, "missing.pt")], /--checkpoint .*missing\.pt: no such file/],
      [["sample", "--checkpoint", join(root, "configs", "model.json")], /model\.json/],
      [["sample", "--checkpoint", sftBest, "--prompt", long], /the prompt is 17 tokens, longer than the model's context T=16/],
      [["sample", "--checkpoint", sftBest, "--prompt-file", join(root, "long.txt")], /the prompt is 17 tokens/],
      [["sample", "--checkpoint", sftBest, "--prompt-file", join(root, "nope.txt")], /--prompt-file .*nope\.txt: no such file/],
      [["sample", "--checkpoint", sftBest, "--prompt", "a", "--prompt-file", join(root, "long.txt")], /contradict/],
      [["sample", "--checkpoint", sftBest, "--temperature", "-0.5"], /--temperature -0\.5: expected a number >= 0/],
      [["sample", "--checkpoint", sftBest, "--temperature", "hot"], /--temperature hot/],
      [["sample", "--checkpoint", sftBest, "--top-k", "-1"], /--top-k -1: expected an integer >= 0/],
      [["sample", "--checkpoint", sftBest, "--max-new-tokens", "0"], /--max-new-tokens 0: expected an integer >= 1/],
      [["sample", "--checkpoint", sftBest, "--seed", "1.5"], /--seed 1\.5: expected an integer/],
      [["sample", "--checkpoint", sftBest, "--device", "tpu"], /--device tpu: expected cpu or mps/],
      [["sample", "--checkpoint", sftBest, "--tokenizer", join(root, "configs", "model.json")], /--tokenizer .*model\.json: tokenizer "undefined" is unknown/],
      [["sample", "--checkpoint", sftBest, "--prompt", long, "--chat"], /the prompt is 19 tokens with the chat wrapper/],
    ];
    if (!deviceAvailable("mps")) cases.push([["sample", "--checkpoint", sftBest, "--device", "mps"], /--device mps: no Metal device in this build or on this machine; use --device cpu/]);
    for (const [args, message] of cases) {
      const r = cli(args, root);
      expect({ args, code: r.code }).toEqual({ args, code: 2 });
      expect(r.err).toMatch(message);
      expect(r.err).not.toMatch(/\n\s+at /); // no stack trace
    }
  });
});
