// npm run bench [-- --quick] [-- --only wake,throughput,throughput4,cost,tracing,...] [-- --fleet N]
// [-- --only storage --minutes N] (the storage soak, never in a quick or full run): holdfast
// side by side with graphile-worker, pg-boss and a model of the deriver's stale-timeout scheme,
// on one embedded Postgres (fsync on). A full run writes bench/results.json and
// bench/chart.svg; --quick, --only and --systems write them to bench/.runs/.
import { mkdir, writeFile } from "node:fs/promises";
import os from "node:os";
import { fileURLToPath } from "node:url";
import pg from "pg";
import {
  type BulkEnqueueResult,
  bulkEnqueue,
  HoldfastBulk,
  HoldfastLoop,
  renderBulkEnqueue,
} from "./bulk-enqueue.js";
import { chartSvg } from "./chart.js";
import { type CheckpointCostResult, checkpointCost, renderCheckpointCost } from "./checkpoint.js";
import { type ClaimScaleResult, claimScale } from "./claim-scale.js";
import { startBenchServer } from "./db.js";
import {
  deriverTakeover,
  holdfastTakeover,
  type LongTaskResult,
  longTasks,
  type TakeoverResult,
} from "./faults.js";
import { type FeatureCostResult, featureCost } from "./feature-cost.js";
import { type FleetResult, fleet } from "./fleet.js";
import {
  notifyFloor,
  type ThroughputResult,
  throughput,
  type WakeResult,
  wakeLatency,
} from "./latency.js";
import {
  type LimitCostResult,
  type LimitRateResult,
  limitCost,
  limitRate,
  renderLimits,
} from "./limits.js";
import { idleResources, type ResourceResult } from "./resources.js";
import { renderSchedules, type ScheduleBenchResult, scheduleBench } from "./schedules.js";
import { fmt, table } from "./stats.js";
import { type StorageResult, storageSoak } from "./storage.js";
import { DeriverSystem } from "./systems/deriver.js";
import { HoldfastSystem } from "./systems/holdfast.js";
import { benchSystems } from "./systems/index.js";
import { loadPeers } from "./systems/peers.js";
import { renderTaskCost, type TaskCostResult, taskCost, taskCostServerFlags } from "./task-cost.js";
import {
  type OverlapCheckResult,
  overlapCheck,
  type Throughput4Result,
  throughput4,
  WorkerChildren,
} from "./throughput4.js";
import { renderTracingCost, type TracingCostResult, tracingCost } from "./tracing.js";

const args = process.argv.slice(2);
const quick = args.includes("--quick");
const onlyArg = args[args.indexOf("--only") + 1];
const only = args.includes("--only") && onlyArg ? new Set(onlyArg.split(",")) : undefined;
const want = (s: string) => !only || only.has(s);
const sysArg = args[args.indexOf("--systems") + 1];
const pick = args.includes("--systems") && sysArg ? sysArg.split(",") : undefined;
const fleetArg = Number(args[args.indexOf("--fleet") + 1]);
const fleetSize = args.includes("--fleet") && fleetArg > 0 ? fleetArg : undefined;
// The storage soak runs only when asked (--only storage): 2 × --minutes (default 10) of load.
const minutesArg = Number(args[args.indexOf("--minutes") + 1]);
const storageMinutes = args.includes("--minutes") && minutesArg > 0 ? minutesArg : 10;

const cfg = quick
  ? {
      wake: 300,
      // Idle wake samples (1 s apart each) beside the `wake` ones 25 ms after a completion.
      wakeIdle: 15,
      pollBudgetMs: 3_000,
      tasks: 1_000,
      tputTimeoutMs: 3_000,
      // The 4-process throughput only when asked (--only throughput4): it took 47 s of a quick
      // pass that went from 191 s to 233 s with it (a shared 2-vCPU VM).
      tput4: false,
      takeovers: 2,
      claimLevels: [1_000, 100_000],
      claimSamples: 50,
      featureSamples: 100,
      idleMs: 6_000,
      longMs: 2_000,
      fleet: { processes: fleetSize ?? 8, idleMs: 5_000, takeovers: 2, claims: 20 },
    }
  : {
      wake: 500,
      wakeIdle: 100,
      pollBudgetMs: 60_000,
      tasks: 20_000,
      tputTimeoutMs: 120_000,
      tput4: true,
      takeovers: 10,
      claimLevels: [1_000, 100_000, 1_000_000],
      claimSamples: 200,
      featureSamples: 500,
      idleMs: 10_000,
      longMs: 3_000,
      fleet: { processes: fleetSize ?? 50, idleMs: 20_000, takeovers: 10, claims: 100 },
    };

const peers = await loadPeers();
const systems = benchSystems(peers).filter(
  (make) => !pick || pick.some((p) => make().label.startsWith(p)),
);

const t0 = Date.now();
const log = (s: string) => process.stderr.write(`${s}\n`);
/** A section's start, with the seconds since the run began (to see where a run spends them). */
const section = (s: string) => log(`${s} (at ${Math.round((Date.now() - t0) / 1000)} s)`);

async function main(): Promise<void> {
  const server = await startBenchServer();
  const admin = new pg.Client({ connectionString: server.url });
  await admin.connect();
  const { rows } = await admin.query<{ v: string }>("select version() as v");
  await admin.end();
  const machine = {
    cpus: `${os.cpus().length} × ${os.cpus()[0]?.model ?? "?"}`,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    postgres: rows[0]?.v.split(",")[0] ?? "?",
    fsync: "on",
    quick,
  };
  const results: Results = { machine, at: new Date().toISOString() };
  try {
    if (want("wake")) {
      section("wake latency…");
      const wake = [await notifyFloor(server.url, cfg.wake)];
      for (const make of systems) {
        const sys = make();
        // Polling systems: a random gap up to 2 s samples the poll phase uniformly.
        const polls = sys.label === "pg-boss (default)" || sys.label.startsWith("deriver");
        wake.push(
          await wakeLatency(
            server.url,
            sys,
            cfg.wake,
            polls ? cfg.pollBudgetMs : 120_000,
            polls ? 2_000 : 10,
            polls ? 0 : cfg.wakeIdle,
          ),
        );
        log(`  ${JSON.stringify(wake.at(-1))}`);
      }
      results.wake = wake;
    }
    if (want("throughput")) {
      section("throughput…");
      const tput = [];
      for (const keys of [0, 100]) {
        for (const make of systems) {
          tput.push(await throughput(server.url, make(), cfg.tasks, keys, cfg.tputTimeoutMs));
          log(`  ${JSON.stringify(tput.at(-1))}`);
        }
      }
      results.throughput = tput;
    }
    if (want("throughput4") && (cfg.tput4 || only)) {
      section("throughput, 4 worker processes…");
      // The peers and holdfast, as in the one-process runs. Left out: the deriver model, and
      // pg-boss default, which polls every 2 s and times out in the one-process run already
      // (here it spent 2 × 120 s draining 2,400 of 20,000).
      const peers = systems.filter((make) => {
        const label = make().label;
        return !label.startsWith("deriver") && label !== "pg-boss (default)";
      });
      const children = await WorkerChildren.start(4);
      try {
        results.throughput4Check = await overlapCheck(server.url, children);
        log(`  overlap check: ${JSON.stringify(results.throughput4Check)}`);
        if (results.throughput4Check.acrossProcesses === 0) {
          throw new Error("throughput4: the overlap check saw no overlap across processes");
        }
        const tput: Throughput4Result[] = [];
        for (const keys of [0, 100]) {
          for (const make of peers) {
            tput.push(
              await throughput4(server.url, children, make(), cfg.tasks, keys, cfg.tputTimeoutMs),
            );
            log(`  ${JSON.stringify(tput.at(-1))}`);
          }
        }
        results.throughput4 = tput;
      } finally {
        await children.close();
      }
    }
    if (want("takeover")) {
      section("takeover…");
      results.takeover = [
        await holdfastTakeover(server.url, cfg.takeovers),
        await deriverTakeover(
          server.url,
          () => new DeriverSystem({ pollMs: 100, staleMs: 1_000, cleanupEveryMs: 100 }),
          1_000,
        ),
        {
          system: "graphile-worker",
          documentedSeconds: 4 * 3600,
          note: "documented: a locked job is re-run after 4 h",
        },
        {
          system: "pg-boss",
          documentedSeconds: 15 * 60,
          note: "documented: expireInSeconds default 15 min",
        },
      ];
    }
    if (want("long")) {
      section("long tasks…");
      const ms = cfg.longMs;
      results.longTasks = await Promise.all([
        longTasks(server.url, new HoldfastSystem(), 2, ms, "no timeout to scale"),
        longTasks(
          server.url,
          new DeriverSystem({ pollMs: 100, staleMs: Math.round(ms / 3), cleanupEveryMs: 100 }),
          2,
          ms,
          `stale timeout scaled to ${Math.round(ms / 3)} ms`,
        ),
        longTasks(
          server.url,
          new peers.PgBossSystem(false, { expireInSeconds: 1 }),
          2,
          ms,
          "expireInSeconds 1",
        ),
      ]);
      results.longTasks.push({
        system: "graphile-worker",
        note: "documented: a job still locked after 4 h is run again (not scalable)",
      });
    }
    if (want("bulk")) {
      section("bulk enqueue of 10,000 tasks…");
      results.bulkEnqueue = await bulkEnqueue(
        server.url,
        [new HoldfastBulk(), new HoldfastLoop(), ...peers.bulkEnqueuers()],
        { items: 10_000, keys: [100, 0], rounds: quick ? 3 : 5, log },
      );
    }
    if (want("claim")) {
      section("claim latency vs backlog…");
      results.claimScale = await claimScale(server.url, cfg.claimLevels, cfg.claimSamples);
    }
    if (want("features")) {
      section("cost of a cap and a debounce…");
      results.featureCost = await featureCost(server.url, cfg.featureSamples);
    }
    if (want("checkpoint")) {
      section("cost of a checkpoint…");
      results.checkpointCost = await checkpointCost(server.url, cfg.featureSamples);
    }
    if (want("tracing")) {
      section("cost of tracing, with and without a tracer…");
      results.tracingCost = await tracingCost(server.url, cfg.featureSamples, quick ? 3 : 5);
    }
    if (want("limits")) {
      section("limits: N starts per second across 4 processes with SIGKILLs; claim cost…");
      results.limitRate = [
        await limitRate(server.url, {
          perSecond: 50,
          seconds: quick ? 10 : 30,
          processes: 4,
          killEveryMs: 4_000,
        }),
      ];
      log(`  ${JSON.stringify(results.limitRate)}`);
      results.limitCost = await limitCost(server.url, cfg.featureSamples);
    }
    if (want("idle")) {
      section("idle resources…");
      results.resources = await idleResources(
        server.url,
        systems.flatMap((make) => [1, 10].map((concurrency) => ({ make, concurrency }))),
        cfg.idleMs,
      );
    }
    if (want("fleet")) {
      section(`fleet of ${cfg.fleet.processes} worker processes…`);
      results.fleet = await fleet(server.url, { ...cfg.fleet, log });
      log(`  ${JSON.stringify(results.fleet)}`);
    }
    // Not in --quick unless asked (--only schedules): its holdfast part alone takes ~30 s.
    if (want("schedules") && (!quick || only)) {
      section("schedules, leader killed every 10 s…");
      results.schedules = await scheduleBench(server.url, {
        quick,
        log,
        peers: peers.schedulePeers,
      });
    }
    if (want("cost")) {
      // Its own server: pg_stat_statements must be preloaded, and track_functions costs the
      // function-heavy systems time the other sections must not pay.
      section("per-task cost (WAL, rows, index entries, statements)…");
      const costServer = await startBenchServer(taskCostServerFlags);
      try {
        results.cost = [];
        const costSystems = systems.filter((make) => {
          const label = make().label;
          return label.startsWith("holdfast (prefetch") || label === "graphile-worker (tuned)";
        });
        for (const make of costSystems) {
          results.cost.push(await taskCost(costServer.url, make(), quick ? 2_000 : 5_000));
          log(`  ${JSON.stringify(results.cost.at(-1))}`);
        }
      } finally {
        await costServer.stop();
      }
    }
    if (only?.has("storage")) {
      results.storage = [];
      for (const retention of ["1 minute", null]) {
        section(`storage soak, retention ${retention ?? "forever"}, ${storageMinutes} min…`);
        results.storage.push(
          await storageSoak(server.url, {
            minutes: storageMinutes,
            distinctPerSecond: 1_000,
            hotPerSecond: 100,
            retention,
            sampleMs: 10_000,
            log,
          }),
        );
      }
    }
  } finally {
    await server.stop();
  }
  results.seconds = Math.round((Date.now() - t0) / 1000);
  const here = (f: string) => fileURLToPath(new URL(f, import.meta.url));
  // Only a full run replaces the committed results: a quick or partial one (--only, --systems)
  // writes to bench/.runs/ (ignored by git).
  const scratch = quick || Boolean(only || pick);
  const out = (f: string) => here(scratch ? `.runs/${f}` : f);
  if (scratch) await mkdir(here(".runs"), { recursive: true });
  await writeFile(out("results.json"), `${JSON.stringify(results, null, 2)}\n`);
  const report = render(results);
  process.stdout.write(`${report}\n`);
  if (results.wake && results.throughput) await writeFile(out("chart.svg"), chart(results));
}

interface Results {
  machine: {
    cpus: string;
    memoryGiB: number;
    node: string;
    postgres: string;
    fsync: string;
    quick: boolean;
  };
  at: string;
  seconds?: number;
  wake?: WakeResult[];
  throughput?: ThroughputResult[];
  throughput4?: Throughput4Result[];
  throughput4Check?: OverlapCheckResult;
  takeover?: TakeoverResult[];
  longTasks?: Array<Partial<LongTaskResult> & { system: string; note: string }>;
  claimScale?: ClaimScaleResult[];
  featureCost?: FeatureCostResult[];
  tracingCost?: TracingCostResult[];
  checkpointCost?: CheckpointCostResult[];
  bulkEnqueue?: BulkEnqueueResult[];
  limitRate?: LimitRateResult[];
  limitCost?: LimitCostResult[];
  resources?: ResourceResult[];
  fleet?: FleetResult;
  schedules?: ScheduleBenchResult;
  storage?: StorageResult[];
  cost?: TaskCostResult[];
}

/** The cells a one-process and a 4-process throughput row share. */
function tputCells(t: ThroughputResult): string[] {
  return [
    t.system,
    String(t.tasks),
    String(t.keys),
    fmt(t.seconds),
    String(t.perSecond),
    String(t.overlaps),
  ];
}

function render(r: Results): string {
  const out: string[] = [];
  const m = r.machine;
  out.push(
    `machine: ${m.cpus}, ${m.memoryGiB} GiB, ${m.node}, ${m.postgres}, fsync ${m.fsync}${m.quick ? ", --quick" : ""}`,
  );
  if (r.cost) {
    out.push("", "Per task, from the server (distinct keys, one worker, concurrency 10)");
    out.push(renderTaskCost(r.cost));
  }
  if (r.storage) {
    out.push(
      "",
      "Storage, steady state: one worker, 1,000 tasks/s on distinct keys + 100/s on 100 hot keys",
    );
    out.push(
      table([
        [
          "retention",
          "minutes",
          "offered/s",
          "handled/s",
          "end / minute 3",
          "bytes/task",
          "pruned/s",
          "autovacuums",
          "MB at end",
        ],
        ...r.storage.map((s) => [
          s.retention,
          String(s.minutes),
          String(s.offered),
          String(s.perSecond),
          s.growth === null ? "-" : fmt(s.growth),
          String(s.bytesPerTask ?? "-"),
          String(s.prunedPerSecond),
          String(s.autovacuums),
          fmt((s.samples.at(-1)?.bytes ?? 0) / 2 ** 20),
        ]),
      ]),
    );
  }
  if (r.wake) {
    out.push(
      "",
      "Wake latency, enqueue commit → handler start (ms): an idle worker (previous task ended 1 s",
      "before; polling systems: at a random phase), and 25 ms after the previous task ended",
    );
    out.push(
      table([
        ["system", "n", "p50", "p95", "p99", "max", "25 ms: n", "p50", "p95", "note"],
        ...r.wake.map((w) => [
          w.system,
          String(w.n),
          fmt(w.p50),
          fmt(w.p95),
          fmt(w.p99),
          fmt(w.max),
          w.afterCompletion ? String(w.afterCompletion.n) : "",
          w.afterCompletion ? fmt(w.afterCompletion.p50) : "",
          w.afterCompletion ? fmt(w.afterCompletion.p95) : "",
          w.note ?? "",
        ]),
      ]),
    );
  }
  if (r.throughput) {
    out.push("", "Throughput, no-op tasks, one worker at concurrency 10");
    out.push(
      table([
        ["system", "tasks", "keys", "seconds", "tasks/s", "overlaps", "note"],
        ...r.throughput.map((t) => [...tputCells(t), t.note ?? ""]),
      ]),
    );
  }
  if (r.throughput4) {
    out.push("", "Throughput, no-op tasks, 4 worker processes at concurrency 10");
    out.push(
      table([
        [
          "system",
          "tasks",
          "keys",
          "seconds",
          "tasks/s",
          "overlaps",
          "handled per process",
          "note",
        ],
        ...r.throughput4.map((t) => [
          ...tputCells(t),
          t.handledPerProcess.join(" / "),
          t.note ?? "",
        ]),
      ]),
    );
  }
  if (r.throughput4Check) {
    const c = r.throughput4Check;
    out.push(
      `overlap check: holdfast, each of ${c.processes} processes on a database of its own (no shared locks), ${c.tasks} tasks, ${c.keys} keys, runs held ${c.holdMs} ms: ${c.overlaps} overlaps, ${c.acrossProcesses} across processes (must be > 0)`,
    );
  }
  if (r.takeover) {
    out.push("", "SIGKILL takeover: kill → task restarted on another worker (s)");
    out.push(
      table([
        ["system", "p50", "p99", "max", "documented", "note"],
        ...r.takeover.map((t) => [
          t.system,
          fmt(t.measured?.p50),
          fmt(t.measured?.p99),
          fmt(t.measured?.max),
          t.documentedSeconds ? `${t.documentedSeconds} s` : "-",
          t.note,
        ]),
      ]),
    );
  }
  if (r.longTasks) {
    out.push("", "Long tasks (longer than the stale/expiry timeout), 3 workers");
    out.push(
      table([
        ["system", "tasks", "runs", "duplicates", "overlaps", "note"],
        ...r.longTasks.map((t) => [
          t.system,
          String(t.tasks ?? "-"),
          String(t.runs ?? "-"),
          String(t.duplicates ?? "-"),
          String(t.overlaps ?? "-"),
          t.note,
        ]),
      ]),
    );
  }
  if (r.claimScale) {
    out.push("", "holdfast.claim() latency vs pending tasks (ms)");
    out.push(
      table([
        ["pending", "n", "p50", "p95", "p99"],
        ...r.claimScale.map((c) => [
          String(c.pending),
          String(c.n),
          fmt(c.p50),
          fmt(c.p95),
          fmt(c.p99),
        ]),
      ]),
    );
  }
  if (r.featureCost) {
    out.push("", "Cost of a cap and a debounce: one session, round trip included (ms)");
    out.push(
      table([
        ["call", "variant", "n", "p50", "p95", "p99"],
        ...r.featureCost.map((c) => [
          c.op,
          c.variant,
          String(c.n),
          fmt(c.p50),
          fmt(c.p95),
          fmt(c.p99),
        ]),
      ]),
    );
  }
  if (r.checkpointCost) {
    out.push("", "Cost of a checkpoint call inside a running handler, fsync on (ms)");
    out.push(renderCheckpointCost(r.checkpointCost));
  }
  if (r.tracingCost) {
    out.push("", "Cost of tracing: hf.enqueue, and a worker draining a backlog (ms)");
    out.push(renderTracingCost(r.tracingCost));
  }
  if (r.bulkEnqueue) {
    out.push("", "Bulk enqueue: one call adding 10,000 tasks, committed (fsync on)");
    out.push(renderBulkEnqueue(r.bulkEnqueue));
  }
  if (r.limitRate && r.limitCost) {
    out.push(
      "",
      "Limits: a limit of N starts/s drawn on by 4 processes, one SIGKILLed every 4 s; claim (ms)",
    );
    out.push(renderLimits(r.limitRate, r.limitCost));
  }
  if (r.resources) {
    out.push("", "Idle worker process: connections it holds, transactions/s while idle");
    out.push(
      table([
        ["system", "concurrency", "connections", "idle xact/s"],
        ...r.resources.map((x) => [
          x.system,
          String(x.concurrency),
          String(x.connections),
          fmt(x.idleXactPerSecond, 1),
        ]),
      ]),
    );
  }
  if (r.fleet) {
    const f = r.fleet;
    out.push("", `holdfast fleet: ${f.processes} idle worker processes on one database`);
    out.push(
      table([
        ["measure", "value"],
        ["transactions/s, idle, total", fmt(f.idle.transactionsPerSecond, 2)],
        ["transactions/s, idle, per process", fmt(f.idle.perProcess, 3)],
        ["holdfast sessions (lock + LISTEN)", String(f.idle.holdfastSessions)],
        ["backends on the database", String(f.idle.backends)],
        [
          "SIGKILL takeover, leader killed (s): p50 / p99 / n",
          `${fmt(f.takeoverLeader.p50)} / ${fmt(f.takeoverLeader.p99)} / ${f.takeoverLeader.n}`,
        ],
        [
          "SIGKILL takeover, follower killed (s): p50 / p99 / n",
          `${fmt(f.takeoverFollower.p50)} / ${fmt(f.takeoverFollower.p99)} / ${f.takeoverFollower.n}`,
        ],
        [
          "claim, enqueue call → start (ms): p50 / p99 / n",
          `${fmt(f.claim.p50)} / ${fmt(f.claim.p99)} / ${f.claim.n}`,
        ],
        ["transactions per task claimed by the fleet", fmt(f.transactionsPerTask, 1)],
      ]),
    );
    for (const m of f.missed) out.push(`  missed: ${m}`);
  }
  if (r.schedules) out.push("", renderSchedules(r.schedules));
  out.push("", `total ${r.seconds} s`);
  return out.join("\n");
}

function chart(r: Results): string {
  const byName = new Map<string, { distinct: number; keyed: number }>();
  for (const t of r.throughput ?? []) {
    const e = byName.get(t.system) ?? { distinct: 0, keyed: 0 };
    if (t.keys === "distinct") e.distinct = t.perSecond || 0;
    else e.keyed = t.perSecond || 0;
    byName.set(t.system, e);
  }
  const m = r.machine;
  return chartSvg({
    wake: r.wake ?? [],
    throughput: [...byName].map(([system, v]) => ({ system, ...v })),
    caption: `${m.cpus}, ${m.postgres}, fsync on${m.quick ? ", --quick" : ""}, ${r.at}`,
  });
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
