/**
 * loss.svg: the loss curves of a run, drawn from metrics.jsonl records. Pure string
 * generation (no dependency), written atomically so a viewer never sees half a file.
 *
 * One panel: x = step, y = loss (nats). The train moving average is a line, each eval a dot,
 * the best eval of each phase a ring (with its value in the subtitle). When the records hold
 * both phases of a pipeline, SFT steps continue after pretrain's last step on the x axis
 * (x = pretrainEnd + sft step), with a dashed vertical divider and the phase names on top.
 *
 * Usage (at every eval, after appending the eval record):
 *   writeLossSvg(join(dir, "loss.svg"), metrics.records(), { title: "train: pipeline" });
 *
 * Marks carry data attributes for tools and tests: val dots `class="val" data-phase data-step
 * data-loss`, the best ring `class="best"`, ticks `class="xtick|ytick" data-value`, and the
 * plot frame `class="frame"`.
 */

import type { MetricsPhase, MetricsRecord } from "./metrics";
import { writeTextAtomic } from "../util/atomic.ts";
import { bestEval } from "./metrics";

export interface LossSvgOptions {
  title?: string;
  width?: number;
  height?: number;
  /**
   * Step at which pretrain ends (where SFT's step 0 is drawn). Default: the largest pretrain
   * step in the records. Pass pretrain's total_steps to place SFT correctly when pretrain was
   * logged only up to an earlier step.
   */
  pretrainEnd?: number;
  /**
   * Step of best.pt per phase, when the loop knows it and it is not simply the lowest eval
   * (for example when best.pt is only updated at checkpoint steps). Default: lowest val loss.
   */
  bestStep?: Partial<Record<MetricsPhase, number>>;
}

const COLORS = {
  train: "#1f77b4",
  val: "#ff7f0e",
  best: "#2ca02c",
  grid: "#e5e5e5",
  axis: "#333333",
  divider: "#888888",
  text: "#222222",
  muted: "#666666",
};

const PHASE_LABEL: Record<MetricsPhase, string> = { pretrain: "pretrain", sft: "SFT" };

/** Escape text for XML character data and attribute values. */
export function xmlEscape(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;").replace(/'/g, "&apos;");
}

/** Round a coordinate to 2 decimals (keeps the file small and stable). */
function r2(v: number): number {
  return Math.round(v * 100) / 100;
}

/** "Nice" tick values covering [lo, hi]: steps of 1, 2 or 5 x 10^k, about `target` of them. */
export function niceTicks(lo: number, hi: number, target: number, minStep = 0): number[] {
  if (!(hi > lo)) {
    const pad = Math.abs(lo) > 0 ? Math.abs(lo) * 0.1 : 1;
    lo -= pad;
    hi += pad;
  }
  const raw = (hi - lo) / Math.max(1, target);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = Math.max(minStep, [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag);
  const start = Math.floor(lo / step + 1e-9) * step;
  const end = Math.ceil(hi / step - 1e-9) * step;
  const ticks: number[] = [];
  for (let i = 0; start + i * step <= end + step * 1e-9; i++) {
    // Round away float noise (0.30000000000000004).
    ticks.push(Number((start + i * step).toPrecision(12)));
  }
  return ticks;
}

function decimalsFor(ticks: number[]): number {
  if (ticks.length < 2) return 0;
  const step = Math.abs(ticks[1]! - ticks[0]!);
  return Math.max(0, Math.min(6, -Math.floor(Math.log10(step) + 1e-9)));
}

/** One label style for a whole axis: "5k 10k 15k" from 10000 up, else plain "200 400". */
function stepFormat(ticks: number[]): (v: number) => string {
  const max = Math.max(0, ...ticks);
  if (max < 10000) return (v) => String(v);
  const step = ticks.length > 1 ? ticks[1]! - ticks[0]! : 1000;
  const dec = step % 1000 === 0 ? 0 : step % 100 === 0 ? 1 : 2;
  return (v) => (v === 0 ? "0" : `${(v / 1000).toFixed(dec)}k`);
}

interface Pt {
  x: number;
  y: number;
}

/** Build the SVG text. Records of any order; non-finite / null values are skipped. */
export function renderLossSvg(allRecords: readonly MetricsRecord[], o: LossSvgOptions = {}): string {
  // The curves are the train (window mean) and eval records; per-step and run records are not drawn.
  const records = allRecords.filter((r) => r.kind === "train" || r.kind === "eval");
  const W = o.width ?? 960;
  const H = o.height ?? 540;
  const M = { left: 76, right: 24, top: 78, bottom: 58 };
  const pw = W - M.left - M.right;
  const ph = H - M.top - M.bottom;

  const phases = (["pretrain", "sft"] as const).filter((p) => records.some((r) => r.phase === p));
  const preMax = records.filter((r) => r.phase === "pretrain").reduce((m, r) => Math.max(m, r.step), 0);
  const pretrainEnd = o.pretrainEnd ?? preMax;
  const offset = (p: MetricsPhase): number => (p === "sft" && phases.includes("pretrain") ? pretrainEnd : 0);
  const gx = (r: MetricsRecord): number => offset(r.phase) + r.step;

  // Data domain.
  let xMax = 0;
  let yLo = Infinity;
  let yHi = -Infinity;
  for (const r of records) {
    xMax = Math.max(xMax, gx(r));
    for (const v of [r.train_loss, r.val_loss]) {
      if (v !== null && Number.isFinite(v)) {
        yLo = Math.min(yLo, v);
        yHi = Math.max(yHi, v);
      }
    }
  }
  if (phases.length === 2) xMax = Math.max(xMax, pretrainEnd);
  const hasData = yLo <= yHi;
  if (!hasData) {
    yLo = 0;
    yHi = 1;
  }
  if (xMax <= 0) xMax = 1;
  // The frame spans the data (plus 5% in y); ticks are the nice values inside it.
  const pad = yHi > yLo ? (yHi - yLo) * 0.05 : Math.max(0.05, Math.abs(yHi) * 0.05);
  const y0 = yLo - pad;
  const y1 = yHi + pad;
  const x0 = -xMax * 0.01; // room for a dot at step 0 ...
  const x1 = xMax * 1.02; // ... and for the last dot and its ring
  const inside = (t: number, lo: number, hi: number): boolean => t >= lo - (hi - lo) * 1e-9 && t <= hi + (hi - lo) * 1e-9;
  // No data: a frame without made-up scales.
  const yTicks = hasData ? niceTicks(y0, y1, 7).filter((t) => inside(t, y0, y1)) : [];
  const xTicks = hasData ? niceTicks(x0, x1, 8, 1).filter((t) => inside(t, x0, x1)) : [];
  const xLabel = stepFormat(xTicks);
  const sx = (v: number): number => r2(M.left + ((v - x0) / (x1 - x0)) * pw);
  const sy = (v: number): number => r2(M.top + ph - ((v - y0) / (y1 - y0)) * ph);

  const out: string[] = [];
  const e = (s: string): void => {
    out.push(s);
  };
  e(`<?xml version="1.0" encoding="UTF-8"?>`);
  e(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="13">`);
  e(`<rect x="0" y="0" width="${W}" height="${H}" fill="#ffffff"/>`);
  e(`<text x="${M.left}" y="24" font-size="17" font-weight="bold" fill="${COLORS.text}">${xmlEscape(o.title ?? "training loss")}</text>`);

  // Subtitle: best val per phase (the checkpoint best.pt holds).
  const bests: { phase: MetricsPhase; rec: MetricsRecord }[] = [];
  for (const p of phases) {
    const want = o.bestStep?.[p];
    const rec =
      want === undefined
        ? bestEval(records, p)
        : records.find((r) => r.phase === p && r.kind === "eval" && r.step === want && r.val_loss !== null) ?? null;
    if (rec) bests.push({ phase: p, rec });
  }
  const sub = bests.map((b) => `${PHASE_LABEL[b.phase]} ${b.rec.val_loss!.toFixed(4)} at step ${b.rec.step}`);
  e(`<text x="${M.left}" y="44" fill="${COLORS.muted}">${xmlEscape(sub.length ? `best val loss: ${sub.join("; ")}` : "no eval yet")}</text>`);

  // Grid and ticks.
  const yd = decimalsFor(yTicks);
  e(`<g class="grid" stroke="${COLORS.grid}" stroke-width="1">`);
  for (const t of yTicks) e(`<line x1="${M.left}" y1="${sy(t)}" x2="${M.left + pw}" y2="${sy(t)}"/>`);
  for (const t of xTicks) e(`<line x1="${sx(t)}" y1="${M.top}" x2="${sx(t)}" y2="${M.top + ph}"/>`);
  e(`</g>`);
  e(`<rect class="frame" x="${M.left}" y="${M.top}" width="${pw}" height="${ph}" fill="none" stroke="${COLORS.axis}" stroke-width="1"/>`);
  for (const t of yTicks) {
    const y = sy(t);
    e(`<g class="ytick" data-value="${t}"><line x1="${M.left - 5}" y1="${y}" x2="${M.left}" y2="${y}" stroke="${COLORS.axis}"/><text x="${M.left - 8}" y="${r2(y + 4)}" text-anchor="end" fill="${COLORS.text}">${t.toFixed(yd)}</text></g>`);
  }
  for (const t of xTicks) {
    const x = sx(t);
    e(`<g class="xtick" data-value="${t}"><line x1="${x}" y1="${M.top + ph}" x2="${x}" y2="${M.top + ph + 5}" stroke="${COLORS.axis}"/><text x="${x}" y="${M.top + ph + 19}" text-anchor="middle" fill="${COLORS.text}">${xLabel(t)}</text></g>`);
  }
  e(`<text class="xlabel" x="${r2(M.left + pw / 2)}" y="${H - 14}" text-anchor="middle" fill="${COLORS.text}">step</text>`);
  e(`<text class="ylabel" x="0" y="0" transform="translate(20 ${r2(M.top + ph / 2)}) rotate(-90)" text-anchor="middle" fill="${COLORS.text}">loss (nats)</text>`);

  // Phase regions: names on top of the frame, divider between them.
  if (phases.length === 2) {
    const dx = sx(pretrainEnd);
    e(`<line class="divider" x1="${dx}" y1="${M.top - 16}" x2="${dx}" y2="${M.top + ph}" stroke="${COLORS.divider}" stroke-width="1.5" stroke-dasharray="6 4"/>`);
    e(`<text class="phase-label" x="${r2(dx - 8)}" y="${M.top - 6}" text-anchor="end" font-weight="bold" fill="${COLORS.muted}">pretrain</text>`);
    // Bold 13px text is about 8px per character; shorten or right-align what would not fit.
    const room = M.left + pw + M.right - 4 - (dx + 8);
    const long = `SFT (from step ${pretrainEnd})`;
    const [label, x, anchor] =
      long.length * 8 <= room ? [long, dx + 8, "start"] : 3 * 8 <= room ? ["SFT", dx + 8, "start"] : ["SFT", M.left + pw + M.right - 4, "end"];
    e(`<text class="phase-label" x="${r2(x)}" y="${M.top - 6}" text-anchor="${anchor}" font-weight="bold" fill="${COLORS.muted}">${xmlEscape(label)}</text>`);
  } else if (phases.length === 1) {
    e(`<text class="phase-label" x="${M.left + 4}" y="${M.top - 6}" font-weight="bold" fill="${COLORS.muted}">${PHASE_LABEL[phases[0]!]}</text>`);
  }

  // Series, clipped to the frame.
  e(`<defs><clipPath id="plot"><rect x="${M.left}" y="${M.top}" width="${pw}" height="${ph}"/></clipPath></defs>`);
  e(`<g clip-path="url(#plot)">`);
  const plotted: Pt[] = [];
  // Dots shrink when evals are dense (e.g. 100 evals over 900 px).
  const nEval = records.filter((r) => r.kind === "eval").length;
  const dotR = r2(Math.max(2, Math.min(3.5, pw / Math.max(1, nEval) / 3)));
  for (const p of phases) {
    const recs = records.filter((r) => r.phase === p).sort((a, b) => a.step - b.step);
    const lines = (kind: "train" | "eval", pick: (r: MetricsRecord) => number | null): Pt[][] => {
      const runs: Pt[][] = [[]];
      for (const r of recs) {
        if (r.kind !== kind) continue;
        const v = pick(r);
        if (v === null || !Number.isFinite(v)) {
          if (runs[runs.length - 1]!.length) runs.push([]); // a gap where the loss diverged
          continue;
        }
        const q = { x: sx(gx(r)), y: sy(v) };
        runs[runs.length - 1]!.push(q);
        plotted.push(q);
      }
      return runs.filter((run) => run.length > 0);
    };
    const poly = (pts: Pt[]): string => pts.map((q) => `${q.x},${q.y}`).join(" ");
    for (const run of lines("eval", (r) => r.val_loss)) {
      if (run.length > 1) e(`<polyline class="val-line" points="${poly(run)}" fill="none" stroke="${COLORS.val}" stroke-width="1" stroke-opacity="0.5"/>`);
    }
    for (const run of lines("train", (r) => r.train_loss)) {
      if (run.length === 1) e(`<circle class="train-point" cx="${run[0]!.x}" cy="${run[0]!.y}" r="2" fill="${COLORS.train}"/>`);
      else e(`<polyline class="train" data-phase="${p}" points="${poly(run)}" fill="none" stroke="${COLORS.train}" stroke-width="1.8" stroke-linejoin="round"/>`);
    }
    for (const r of recs) {
      if (r.kind !== "eval" || r.val_loss === null || !Number.isFinite(r.val_loss)) continue;
      e(`<circle class="val" data-phase="${p}" data-step="${r.step}" data-loss="${r.val_loss}" cx="${sx(gx(r))}" cy="${sy(r.val_loss)}" r="${dotR}" fill="${COLORS.val}" stroke="#ffffff" stroke-width="0.8"/>`);
    }
  }
  for (const b of bests) {
    e(`<circle class="best" data-phase="${b.phase}" data-step="${b.rec.step}" data-loss="${b.rec.val_loss}" cx="${sx(gx(b.rec))}" cy="${sy(b.rec.val_loss!)}" r="8" fill="none" stroke="${COLORS.best}" stroke-width="2.5"/>`);
  }
  e(`</g>`);
  if (!hasData) {
    e(`<text x="${r2(M.left + pw / 2)}" y="${r2(M.top + ph / 2)}" text-anchor="middle" fill="${COLORS.muted}">no metrics yet</text>`);
  }

  // Legend inside the frame, in the corner covering the fewest data points (losses fall, so
  // top right first; ties keep that order).
  const lw = 206;
  const lh = 72;
  const corners: [number, number][] = [
    [M.left + pw - lw - 10, M.top + 10],
    [M.left + pw - lw - 10, M.top + ph - lh - 10],
    [M.left + 10, M.top + ph - lh - 10],
    [M.left + 10, M.top + 10],
  ];
  const covered = ([cx, cy]: [number, number]): number =>
    plotted.filter((q) => q.x >= cx - 6 && q.x <= cx + lw + 6 && q.y >= cy - 6 && q.y <= cy + lh + 6).length;
  let [lx, ly] = corners[0]!;
  let fewest = covered(corners[0]!);
  for (const c of corners.slice(1)) {
    const n = covered(c);
    if (n < fewest) {
      fewest = n;
      [lx, ly] = c;
    }
  }
  e(`<g class="legend">`);
  e(`<rect x="${lx}" y="${ly}" width="${lw}" height="${lh}" fill="#ffffff" fill-opacity="0.9" stroke="#bbbbbb" rx="3"/>`);
  e(`<line x1="${lx + 10}" y1="${ly + 16}" x2="${lx + 36}" y2="${ly + 16}" stroke="${COLORS.train}" stroke-width="2"/>`);
  e(`<text x="${lx + 44}" y="${ly + 20}" fill="${COLORS.text}">train loss (moving avg)</text>`);
  e(`<circle cx="${lx + 23}" cy="${ly + 36}" r="3.5" fill="${COLORS.val}"/>`);
  e(`<text x="${lx + 44}" y="${ly + 40}" fill="${COLORS.text}">val loss</text>`);
  e(`<circle cx="${lx + 23}" cy="${ly + 56}" r="7" fill="none" stroke="${COLORS.best}" stroke-width="2.5"/>`);
  e(`<text x="${lx + 44}" y="${ly + 60}" fill="${COLORS.text}">best checkpoint</text>`);
  e(`</g>`);
  e(`</svg>`);
  return out.join("\n") + "\n";
}

/** Render and write atomically (temp file, fsync, rename). */
export function writeLossSvg(path: string, records: readonly MetricsRecord[], o: LossSvgOptions = {}): void {
  writeTextAtomic(path, renderLossSvg(records, o));
}
