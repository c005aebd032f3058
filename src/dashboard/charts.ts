// Inline SVG charts drawn on the server: no script, no asset, readable without JavaScript.

import { formatDuration } from "../inspect/format.js";
import type { Activity, KindActivity, MinuteCounts } from "../inspect/history.js";
import { type Html, html } from "./html.js";

/** Series colours, shared with the legend (CSS classes s-started, s-succeeded...). */
export const series = [
  { name: "started", colour: "#1f5fa8" },
  { name: "succeeded", colour: "#2e8b57" },
  { name: "failed", colour: "#c0392b" },
  { name: "lost", colour: "#e67e22" },
  { name: "cancelled", colour: "#7f8c8d" },
] as const;

const hhmm = (ms: number) => new Date(ms).toISOString().slice(11, 16);

/** 1, 2, 5, 10, 20, 50... at or above n: round numbers for the y axis. */
function niceCeil(n: number): number {
  if (n <= 1) return 1;
  const p = 10 ** Math.floor(Math.log10(n));
  for (const m of [1, 2, 5, 10]) if (m * p >= n) return m * p;
  return 10 * p;
}

/**
 * Attempts per minute of one kind: the attempts that ended, stacked by outcome, and a step
 * line of the attempts that started; each minute has a tooltip with its counts.
 */
export function activityChart(k: KindActivity): Html {
  const w = 560;
  const h = 150;
  const left = 36;
  const right = 8;
  const top = 10;
  const bottom = 22;
  const plotW = w - left - right;
  const plotH = h - top - bottom;
  const n = k.minutes.length;
  const step = plotW / n;
  const outcomes = series.slice(1);
  const ended = (m: MinuteCounts) => outcomes.reduce((a, s) => a + m[s.name], 0);
  const max = niceCeil(Math.max(...k.minutes.map((m) => Math.max(m.started, ended(m)))));
  const y = (v: number) => top + plotH - (v / max) * plotH;
  const x0 = (i: number) => left + i * step;
  const bars = k.minutes.flatMap((m, i) => {
    let base = 0;
    return outcomes.map((s) => {
      const v = m[s.name];
      if (v === 0) return null;
      const rect = html`<rect x="${(x0(i) + step * 0.15).toFixed(1)}" y="${y(base + v).toFixed(1)}" width="${(step * 0.7).toFixed(1)}" height="${(y(base) - y(base + v)).toFixed(1)}" fill="${s.colour}"/>`;
      base += v;
      return rect;
    });
  });
  const started = k.minutes.some((m) => m.started > 0)
    ? html`<path d="${k.minutes
        .map(
          (m, i) =>
            `${i === 0 ? "M" : "L"}${x0(i).toFixed(1)},${y(m.started).toFixed(1)} H${x0(i + 1).toFixed(1)}`,
        )
        .join(" ")}" fill="none" stroke="${series[0].colour}" stroke-width="1.5"/>`
    : null;
  const grid = [0, max / 2, max].map(
    (v) =>
      html`<line x1="${left}" x2="${w - right}" y1="${y(v).toFixed(1)}" y2="${y(v).toFixed(1)}" class="grid"/><text x="${left - 5}" y="${(y(v) + 3.5).toFixed(1)}" text-anchor="end" class="axis">${Number.isInteger(v) ? v : v.toFixed(1)}</text>`,
  );
  const first = k.minutes[0]?.at ?? 0;
  const xLabels = [0, Math.floor(n / 2), n - 1].map(
    (i, j) =>
      html`<text x="${(x0(i) + step / 2).toFixed(1)}" y="${h - 6}" text-anchor="${["start", "middle", "end"][j]}" class="axis">${hhmm(first + i * 60_000)}</text>`,
  );
  const tips = k.minutes.map((m, i) => {
    const counts = series.map((s) => `${s.name} ${m[s.name]}`).join(", ");
    return html`<rect x="${x0(i).toFixed(1)}" y="${top}" width="${step.toFixed(1)}" height="${plotH}" class="hit"><title>${hhmm(m.at)} UTC: ${counts}</title></rect>`;
  });
  return html`<svg class="chart" viewBox="0 0 ${w} ${h}" role="img" aria-label="attempts per minute of ${k.kind}, last ${n} minutes">${grid}${bars}${started}${xLabels}${tips}</svg>`;
}

/** Totals of the window per series, for the legend under a chart. */
export function totals(k: KindActivity): Record<(typeof series)[number]["name"], number> {
  const sum = (name: (typeof series)[number]["name"]) => k.minutes.reduce((a, m) => a + m[name], 0);
  return {
    started: sum("started"),
    succeeded: sum("succeeded"),
    failed: sum("failed"),
    lost: sum("lost"),
    cancelled: sum("cancelled"),
  };
}

/** Axis marks of the run-time chart, in ms. */
const tickMs = [1, 10, 100, 1_000, 10_000, 60_000, 600_000, 3_600_000, 36_000_000, 86_400_000 * 7];
const tickLabel = (t: number): string =>
  t < 1_000
    ? `${t} ms`
    : t < 60_000
      ? `${t / 1_000} s`
      : t < 3_600_000
        ? `${t / 60_000} min`
        : t < 86_400_000
          ? `${t / 3_600_000} h`
          : `${t / 86_400_000} d`;

/** Run time p50 (dark) and p95 (light) per kind, on one logarithmic scale: a kind of
 *  seconds and a kind of minutes both stay readable. */
export function durationChart(activity: Activity): Html | null {
  const kinds = activity.kinds.filter((k) => k.p95Ms !== null);
  if (kinds.length === 0) return null;
  const row = 24;
  const labelW = 130;
  const valueW = 120;
  const w = 720;
  const barW = w - labelW - valueW;
  const axis = 16;
  const h = kinds.length * row + axis + 4;
  // Round durations around the data, spaced evenly on the log scale.
  const p50s = kinds.map((k) => k.p50Ms ?? 1);
  const p95s = kinds.map((k) => k.p95Ms ?? 1);
  const loTick = [...tickMs].reverse().find((t) => t <= Math.min(...p50s)) ?? 1;
  const hiTick = tickMs.find((t) => t >= Math.max(...p95s) && t > loTick) ?? 604_800_000;
  const lo = Math.log10(loTick);
  const hi = Math.log10(hiTick);
  const len = (v: number | null) =>
    Math.max(2, ((Math.log10(Math.min(hiTick, Math.max(loTick, v ?? 1))) - lo) / (hi - lo)) * barW);
  const ticks = tickMs
    .filter((t) => t >= loTick && t <= hiTick)
    .map((t) => {
      const xt = labelW + ((Math.log10(t) - lo) / (hi - lo)) * barW;
      return html`<line x1="${xt.toFixed(1)}" x2="${xt.toFixed(1)}" y1="0" y2="${h - axis}" class="grid"/><text x="${xt.toFixed(1)}" y="${h - 3}" text-anchor="middle" class="axis">${tickLabel(t)}</text>`;
    });
  const rows = kinds.map((k, i) => {
    const top = 2 + i * row;
    const label = k.kind.length > 18 ? `${k.kind.slice(0, 17)}…` : k.kind;
    return html`<g><title>${k.kind}: p50 ${formatDuration(k.p50Ms)}, p95 ${formatDuration(k.p95Ms)} over ${k.runs} runs</title>
<text x="0" y="${top + 15}" class="label">${label}</text>
<rect x="${labelW}" y="${top + 4}" width="${len(k.p95Ms).toFixed(1)}" height="14" fill="#c9dcef"/>
<rect x="${labelW}" y="${top + 4}" width="${len(k.p50Ms).toFixed(1)}" height="14" fill="#3b6fa0"/>
<text x="${labelW + barW + 10}" y="${top + 15}" class="value">${formatDuration(k.p50Ms)} / ${formatDuration(k.p95Ms)}</text></g>`;
  });
  return html`<svg class="chart durations" viewBox="0 0 ${w} ${h}" role="img" aria-label="run time p50 and p95 per kind">${ticks}${rows}</svg>`;
}
