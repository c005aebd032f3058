// A small hand-written SVG: wake latency (p50/p95/p99, log scale) and throughput bars.

export interface ChartInput {
  wake: Array<{ system: string; p50: number; p95: number; p99: number }>;
  throughput: Array<{ system: string; distinct: number; keyed: number }>;
  caption: string;
}

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

export function chartSvg(input: ChartInput): string {
  const W = 900;
  const rowH = 22;
  const left = 210;
  const plotW = W - left - 40;
  const parts: string[] = [];
  let y = 30;
  parts.push(
    `<text x="10" y="${y}" font-size="15" font-weight="bold">Wake latency, enqueue commit → handler start (ms, log scale)</text>`,
  );
  y += 14;
  const maxMs = Math.max(10, ...input.wake.map((w) => w.p99));
  const logMin = Math.log10(0.05);
  const logMax = Math.log10(maxMs * 1.2);
  const xOf = (ms: number) =>
    left + ((Math.log10(Math.max(ms, 0.05)) - logMin) / (logMax - logMin)) * plotW;
  const colors = { p50: "#2b6cb0", p95: "#90cdf4", p99: "#e2e8f0" };
  for (const w of input.wake) {
    y += rowH;
    parts.push(
      `<text x="${left - 8}" y="${y + 12}" font-size="12" text-anchor="end">${esc(w.system)}</text>`,
    );
    for (const [k, v] of [
      ["p99", w.p99],
      ["p95", w.p95],
      ["p50", w.p50],
    ] as const) {
      parts.push(
        `<rect x="${left}" y="${y}" width="${Math.max(1, xOf(v) - left).toFixed(1)}" height="16" fill="${colors[k]}" stroke="#4a5568" stroke-width="0.3"/>`,
      );
    }
    parts.push(
      `<text x="${(xOf(w.p99) + 4).toFixed(1)}" y="${y + 12}" font-size="11">${w.p50.toFixed(2)} / ${w.p95.toFixed(2)} / ${w.p99.toFixed(2)}</text>`,
    );
  }
  y += rowH + 6;
  for (const tick of [0.1, 1, 10, 100, 1000, 10000]) {
    if (tick > maxMs * 1.2) break;
    const x = xOf(tick).toFixed(1);
    parts.push(
      `<line x1="${x}" y1="50" x2="${x}" y2="${y - 4}" stroke="#a0aec0" stroke-dasharray="2,3"/>`,
    );
    parts.push(`<text x="${x}" y="${y + 8}" font-size="11" text-anchor="middle">${tick}</text>`);
  }
  y += 16;
  parts.push(
    `<text x="${left}" y="${y}" font-size="11"><tspan fill="${colors.p50}">■ p50</tspan>  <tspan fill="#63b3ed">■ p95</tspan>  <tspan fill="#718096">■ p99</tspan></text>`,
  );

  y += 40;
  parts.push(
    `<text x="10" y="${y}" font-size="15" font-weight="bold">Throughput, no-op tasks at concurrency 10 (tasks/s)</text>`,
  );
  y += 14;
  const maxT = Math.max(1, ...input.throughput.flatMap((t) => [t.distinct, t.keyed]));
  const tx = (v: number) => (v / maxT) * (plotW - 60);
  const top = y + 6;
  for (const t of input.throughput) {
    y += rowH + 10;
    parts.push(
      `<text x="${left - 8}" y="${y + 12}" font-size="12" text-anchor="end">${esc(t.system)}</text>`,
    );
    parts.push(
      `<rect x="${left}" y="${y}" width="${Math.max(1, tx(t.distinct)).toFixed(1)}" height="12" fill="#2f855a"/>`,
    );
    parts.push(
      `<text x="${(left + tx(t.distinct) + 4).toFixed(1)}" y="${y + 10}" font-size="11">${Math.round(t.distinct)}</text>`,
    );
    parts.push(
      `<rect x="${left}" y="${y + 13}" width="${Math.max(1, tx(t.keyed)).toFixed(1)}" height="12" fill="#9ae6b4"/>`,
    );
    parts.push(
      `<text x="${(left + tx(t.keyed) + 4).toFixed(1)}" y="${y + 23}" font-size="11">${Math.round(t.keyed)}</text>`,
    );
  }
  parts.push(`<line x1="${left}" y1="${top}" x2="${left}" y2="${y + 28}" stroke="#4a5568"/>`);
  y += 50;
  parts.push(
    `<text x="${left}" y="${y}" font-size="11"><tspan fill="#2f855a">■ distinct keys</tspan>  <tspan fill="#48bb78">■ 100 keys (one task per key at a time)</tspan></text>`,
  );
  y += 22;
  parts.push(`<text x="10" y="${y}" font-size="11" fill="#4a5568">${esc(input.caption)}</text>`);
  y += 12;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${y}" viewBox="0 0 ${W} ${y}" font-family="sans-serif">`,
    "<title>holdfast benchmark: wake latency and throughput</title>",
    `<rect width="100%" height="100%" fill="white"/>`,
    ...parts,
    "</svg>",
    "",
  ].join("\n");
}
