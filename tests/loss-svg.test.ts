import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { niceTicks, renderLossSvg, writeLossSvg } from "../src/train/loss-svg";
import type { MetricsPhase, MetricsRecord } from "../src/train/metrics";

// ---- a small strict XML parser (well-formedness is what is tested) ----

interface El {
  name: string;
  attrs: Record<string, string>;
  children: El[];
  text: string;
}

const NAME = /^[A-Za-z_][\w.:-]*/;

function unescape(s: string, where: string): string {
  return s.replace(/&([^;]*);?/g, (m, ent: string) => {
    const map: Record<string, string> = { amp: "&", lt: "<", gt: ">", quot: '"', apos: "'" };
    if (!m.endsWith(";") || !(ent in map)) throw new Error(`bad entity "${m}" in ${where}`);
    return map[ent]!;
  });
}

/** Parse a whole document; throws on anything not well-formed. Returns the root element. */
function parseXml(doc: string): El {
  let i = 0;
  const stack: El[] = [];
  let root: El | null = null;
  if (doc.startsWith("<?xml")) {
    const end = doc.indexOf("?>");
    if (end < 0) throw new Error("unterminated XML declaration");
    i = end + 2;
  }
  while (i < doc.length) {
    const lt = doc.indexOf("<", i);
    const text = doc.slice(i, lt < 0 ? doc.length : lt);
    if (text.trim() !== "") {
      if (stack.length === 0) throw new Error(`text outside the root: "${text.trim().slice(0, 30)}"`);
      if (text.includes(">")) throw new Error(`raw ">" in text "${text}"`);
      stack[stack.length - 1]!.text += unescape(text, "text");
    }
    if (lt < 0) break;
    i = lt + 1;
    if (doc[i] === "/") {
      const m = NAME.exec(doc.slice(i + 1));
      if (!m) throw new Error(`bad end tag at ${i}`);
      const close = doc.indexOf(">", i);
      if (doc.slice(i + 1 + m[0].length, close).trim() !== "") throw new Error(`junk in end tag </${m[0]}`);
      const open = stack.pop();
      if (!open || open.name !== m[0]) throw new Error(`</${m[0]}> closes <${open?.name ?? "nothing"}>`);
      i = close + 1;
      continue;
    }
    const m = NAME.exec(doc.slice(i));
    if (!m) throw new Error(`bad tag name at ${i}: ${doc.slice(i, i + 20)}`);
    const el: El = { name: m[0], attrs: {}, children: [], text: "" };
    const parent = stack[stack.length - 1];
    if (parent) parent.children.push(el);
    else if (root) throw new Error(`second root element <${el.name}>`);
    else root = el;
    i += m[0].length;
    for (;;) {
      const ws = /^\s*/.exec(doc.slice(i))![0].length;
      i += ws;
      if (doc.startsWith("/>", i)) {
        i += 2;
        break;
      }
      if (doc[i] === ">") {
        i += 1;
        stack.push(el);
        break;
      }
      if (ws === 0) throw new Error(`<${el.name}>: attributes must be separated by spaces at ${i}`);
      const an = NAME.exec(doc.slice(i));
      if (!an) throw new Error(`<${el.name}>: bad attribute at ${doc.slice(i, i + 20)}`);
      i += an[0].length;
      if (doc[i] !== "=" || doc[i + 1] !== '"') throw new Error(`<${el.name}> ${an[0]}: value must be ="quoted"`);
      const endq = doc.indexOf('"', i + 2);
      const raw = doc.slice(i + 2, endq);
      if (raw.includes("<")) throw new Error(`<${el.name}> ${an[0]}: "<" in attribute value`);
      if (an[0] in el.attrs) throw new Error(`<${el.name}>: duplicate attribute ${an[0]}`);
      el.attrs[an[0]] = unescape(raw, `attribute ${an[0]}`);
      i = endq + 1;
    }
  }
  if (stack.length) throw new Error(`unclosed <${stack[stack.length - 1]!.name}>`);
  if (!root) throw new Error("no root element");
  return root;
}

function all(el: El, pred: (e: El) => boolean, out: El[] = []): El[] {
  if (pred(el)) out.push(el);
  for (const c of el.children) all(c, pred, out);
  return out;
}
const byClass = (root: El, cls: string): El[] => all(root, (e) => (e.attrs.class ?? "").split(" ").includes(cls));
const texts = (root: El): string[] => all(root, (e) => e.name === "text").map((e) => e.text);

// ---- fixtures ----

function rec(phase: MetricsPhase, kind: "train" | "eval", step: number, loss: number | null): MetricsRecord {
  return {
    phase,
    kind,
    step,
    lr: 1e-4,
    train_loss: kind === "train" ? loss : null,
    val_loss: kind === "eval" ? loss : null,
    tokens_per_s: kind === "train" ? 1000 : null,
    wall_time_s: step,
    time: "2025-01-01T00:00:00.000Z",
  };
}

/** A pipeline: pretrain 1000 steps, SFT 400 steps. */
function pipeline(): MetricsRecord[] {
  const r: MetricsRecord[] = [];
  for (let s = 50; s <= 1000; s += 50) {
    r.push(rec("pretrain", "train", s, 3 + 5 * Math.exp(-s / 200)));
    if (s % 200 === 0) r.push(rec("pretrain", "eval", s, 3.1 + 5 * Math.exp(-s / 200) + (s === 1000 ? 0.2 : 0)));
  }
  for (let s = 50; s <= 400; s += 50) {
    r.push(rec("sft", "train", s, 2.2 + Math.exp(-s / 100)));
    if (s % 100 === 0) r.push(rec("sft", "eval", s, 2.4 + Math.exp(-s / 100) + (s === 400 ? 0.1 : 0)));
  }
  return r;
}

/** The data -> pixel map implied by the drawn ticks (independent of the renderer's own maths). */
function axisMap(root: El, cls: "xtick" | "ytick"): (v: number) => number {
  const ticks = byClass(root, cls).map((g) => {
    const line = g.children.find((c) => c.name === "line")!;
    return { v: Number(g.attrs["data-value"]), px: Number(cls === "xtick" ? line.attrs.x1 : line.attrs.y1) };
  });
  expect(ticks.length).toBeGreaterThanOrEqual(3);
  const a = ticks[0]!;
  const b = ticks[ticks.length - 1]!;
  // Every tick lies on the same line (linear axis).
  for (const t of ticks) expect(t.px).toBeCloseTo(a.px + ((t.v - a.v) / (b.v - a.v)) * (b.px - a.px), 1);
  return (v) => a.px + ((v - a.v) / (b.v - a.v)) * (b.px - a.px);
}

// ---- tests ----

describe("the XML checker used here", () => {
  test("accepts well-formed XML and rejects what is not", () => {
    const ok = parseXml('<?xml version="1.0"?>\n<a x="1"><b y="&amp;"/><c>t &lt; u</c></a>\n');
    expect(ok.children.map((c) => c.name)).toEqual(["b", "c"]);
    expect(ok.children[0]!.attrs.y).toBe("&");
    expect(ok.children[1]!.text).toBe("t < u");
    for (const bad of ["<a x=1/>", "<a x='1'/>", "<a><b></a>", "<a>", "<a/><b/>", "<a>x & y</a>", '<a x="1"y="2"/>', '<a x="1" x="2"/>', "<a>&nbsp;</a>"]) {
      expect(() => parseXml(bad)).toThrow();
    }
  });
});

describe("loss.svg", () => {
  test("well-formed XML with title, axis labels, legend and phase divider", () => {
    const svg = renderLossSvg(pipeline(), { title: "run <a> & \"b\"" });
    const root = parseXml(svg);
    expect(root.name).toBe("svg");
    expect(root.attrs.xmlns).toBe("http://www.w3.org/2000/svg");
    const t = texts(root);
    expect(t).toContain('run <a> & "b"');
    expect(t).toContain("step");
    expect(t).toContain("loss (nats)");
    expect(t).toContain("train loss (moving avg)");
    expect(t).toContain("val loss");
    expect(t).toContain("best checkpoint");
    expect(t).toContain("pretrain");
    expect(t).toContain("SFT (from step 1000)");
    expect(byClass(root, "legend")).toHaveLength(1);
    const divider = byClass(root, "divider");
    expect(divider).toHaveLength(1);
    expect(Number(divider[0]!.attrs.x1)).toBeCloseTo(axisMap(root, "xtick")(1000), 1);
  });

  test("a dot for each val record at its coordinates; SFT continues after pretrain", () => {
    const records = pipeline();
    const root = parseXml(renderLossSvg(records));
    const X = axisMap(root, "xtick");
    const Y = axisMap(root, "ytick");
    const frame = byClass(root, "frame")[0]!;
    const [fx, fy, fw, fh] = ["x", "y", "width", "height"].map((k) => Number(frame.attrs[k]));
    const dots = byClass(root, "val");
    const evals = records.filter((r) => r.kind === "eval");
    expect(dots).toHaveLength(evals.length);
    for (const r of evals) {
      const d = dots.find((e) => e.attrs["data-phase"] === r.phase && Number(e.attrs["data-step"]) === r.step);
      expect(d).toBeDefined();
      const gx = (r.phase === "sft" ? 1000 : 0) + r.step;
      expect(Number(d!.attrs.cx)).toBeCloseTo(X(gx), 1);
      expect(Number(d!.attrs.cy)).toBeCloseTo(Y(r.val_loss!), 1);
      // Inside the frame.
      expect(Number(d!.attrs.cx)).toBeGreaterThanOrEqual(fx!);
      expect(Number(d!.attrs.cx)).toBeLessThanOrEqual(fx! + fw!);
      expect(Number(d!.attrs.cy)).toBeGreaterThanOrEqual(fy!);
      expect(Number(d!.attrs.cy)).toBeLessThanOrEqual(fy! + fh!);
    }
    // The train lines: one per phase, with a vertex per train record, at its coordinates.
    for (const phase of ["pretrain", "sft"] as const) {
      const line = byClass(root, "train").find((e) => e.attrs["data-phase"] === phase)!;
      const pts = line.attrs.points!.split(" ").map((p) => p.split(",").map(Number));
      const trains = records.filter((r) => r.phase === phase && r.kind === "train");
      expect(pts).toHaveLength(trains.length);
      trains.forEach((r, k) => {
        expect(pts[k]![0]!).toBeCloseTo(X((phase === "sft" ? 1000 : 0) + r.step), 1);
        expect(pts[k]![1]!).toBeCloseTo(Y(r.train_loss!), 1);
      });
    }
  });

  test("the best checkpoint of each phase is ringed and named in the subtitle", () => {
    const records = pipeline();
    const root = parseXml(renderLossSvg(records));
    const best = byClass(root, "best");
    expect(best.map((b) => `${b.attrs["data-phase"]}@${b.attrs["data-step"]}`)).toEqual(["pretrain@800", "sft@300"]);
    const dot = (phase: string, step: string) => byClass(root, "val").find((d) => d.attrs["data-phase"] === phase && d.attrs["data-step"] === step)!;
    for (const b of best) {
      const d = dot(b.attrs["data-phase"]!, b.attrs["data-step"]!);
      expect([b.attrs.cx, b.attrs.cy]).toEqual([d.attrs.cx, d.attrs.cy]);
    }
    const sub = texts(root).find((s) => s.startsWith("best val loss:"))!;
    expect(sub).toBe(`best val loss: pretrain ${(3.1 + 5 * Math.exp(-4)).toFixed(4)} at step 800; SFT ${(2.4 + Math.exp(-3)).toFixed(4)} at step 300`);
    // When the loop says which step best.pt holds, that one is marked.
    const root2 = parseXml(renderLossSvg(records, { bestStep: { pretrain: 600 } }));
    expect(byClass(root2, "best").map((b) => `${b.attrs["data-phase"]}@${b.attrs["data-step"]}`)).toEqual(["pretrain@600", "sft@300"]);
  });

  test("a short SFT after a long pretrain: the phase label is shortened to stay in the picture", () => {
    const r = [rec("pretrain", "train", 20000, 3), rec("pretrain", "eval", 20000, 3.1), rec("sft", "train", 300, 2), rec("sft", "eval", 300, 3.2)];
    const root = parseXml(renderLossSvg(r));
    const label = byClass(root, "phase-label").find((e) => e.text.startsWith("SFT"))!;
    expect(label.text).toBe("SFT");
    expect(Number(label.attrs.x) + 3 * 8).toBeLessThanOrEqual(Number(root.attrs.width));
  });

  test("one phase, no divider; a diverged stretch leaves a gap in the line", () => {
    const r = [10, 8, null, null, 6, 5].map((v, k) => rec("pretrain", "train", (k + 1) * 50, v));
    const root = parseXml(renderLossSvg(r));
    expect(byClass(root, "divider")).toHaveLength(0);
    expect(byClass(root, "train")).toHaveLength(2);
    expect(texts(root)).toContain("pretrain");
    expect(texts(root)).toContain("no eval yet");
  });

  test("no records: still a valid picture that says so", () => {
    const root = parseXml(renderLossSvg([]));
    expect(texts(root)).toContain("no metrics yet");
    expect(byClass(root, "val")).toHaveLength(0);
  });

  test("nice ticks", () => {
    expect(niceTicks(0, 1000, 8)).toEqual([0, 200, 400, 600, 800, 1000]);
    expect(niceTicks(2.13, 7.9, 7)).toEqual([2, 3, 4, 5, 6, 7, 8]);
    expect(niceTicks(0.1, 0.35, 5)).toEqual([0.1, 0.15, 0.2, 0.25, 0.3, 0.35]);
    expect(niceTicks(3, 3, 5).length).toBeGreaterThan(1);
  });

  describe("writeLossSvg", () => {
    let dir = "";
    beforeEach(() => (dir = mkdtempSync(join(tmpdir(), "loss-svg-test-"))));
    afterEach(() => rmSync(dir, { recursive: true, force: true }));
    test("writes the file atomically (no temp file left) and overwrites it", () => {
      const p = join(dir, "loss.svg");
      writeLossSvg(p, []);
      writeLossSvg(p, pipeline());
      expect(readdirSync(dir)).toEqual(["loss.svg"]);
      expect(byClass(parseXml(readFileSync(p, "utf8")), "val").length).toBe(9);
    });
  });
});
