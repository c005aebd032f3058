// What one task costs the server, per system, read from the server itself: WAL bytes and
// records by kind (pg_walinspect: heap inserts, updates, HOT updates, deletes, btree entries,
// commits), statements (pg_stat_statements: round trips) and, for holdfast, self time per SQL
// function (track_functions = all). N no-op tasks on distinct keys, enqueued in one statement,
// then drained by one worker at concurrency 10. Standalone: `tsx bench/task-cost.ts [--tasks N]
// [--systems a,b]`; also a section of `npm run bench` (--only cost).
import pg from "pg";
import { createDatabase, dropDatabase, startBenchServer, until } from "./db.js";
import { round, table } from "./stats.js";
import { HoldfastSystem } from "./systems/holdfast.js";
import { loadPeers } from "./systems/peers.js";
import type { QueueSystem } from "./systems/types.js";

export interface PhaseCost {
  /** Per task. */
  walBytes: number;
  heapInserts: number;
  heapUpdates: number;
  hotUpdates: number;
  heapDeletes: number;
  btreeEntries: number;
  commits: number;
  statements: number;
}

export interface TaskCostResult {
  system: string;
  tasks: number;
  enqueue: PhaseCost;
  drain: PhaseCost;
  /** Self time per call and calls per task of the system's SQL functions in the drain. */
  functions: Array<{ name: string; callsPerTask: number; selfMsPerCall: number }>;
}

/** Server flags the section needs on its own server. */
export const taskCostServerFlags = [
  "-c",
  "shared_preload_libraries=pg_stat_statements",
  "-c",
  "track_functions=all",
  "-c",
  "pg_stat_statements.track=top",
];

interface Mark {
  lsn: string;
  commits: number;
}

async function mark(admin: pg.Client, db: string): Promise<Mark> {
  // The counters of other backends reach pg_stat_database when they report (up to 1 s late
  // on 15+, 0.5 s before): wait for them to settle before reading.
  await new Promise((r) => setTimeout(r, 1_200));
  const { rows } = await admin.query<{ lsn: string; commits: string }>(
    `select pg_current_wal_lsn()::text as lsn,
       (select xact_commit from pg_stat_database where datname = $1)::text as commits`,
    [db],
  );
  const r = rows[0] as { lsn: string; commits: string };
  return { lsn: r.lsn, commits: Number(r.commits) };
}

async function phaseCost(
  admin: pg.Client,
  db: string,
  from: Mark,
  to: Mark,
  n: number,
): Promise<PhaseCost> {
  const { rows } = await admin.query<{ type: string; count: string; bytes: string }>(
    `select "resource_manager/record_type" as type, count::text, combined_size::text as bytes
     from pg_get_wal_stats($1::pg_lsn, $2::pg_lsn, true)`,
    [from.lsn, to.lsn],
  );
  const count = (re: RegExp) =>
    rows.filter((r) => re.test(r.type)).reduce((s, r) => s + Number(r.count), 0);
  const bytes = rows.reduce((s, r) => s + Number(r.bytes), 0);
  const st = await admin.query<{ calls: string }>(
    `select coalesce(sum(calls), 0)::text as calls from pg_stat_statements s
     join pg_database d on d.oid = s.dbid where d.datname = $1`,
    [db],
  );
  const per = (x: number) => round(x / n, 2);
  return {
    walBytes: per(bytes),
    heapInserts: per(count(/^Heap\/INSERT/)),
    heapUpdates: per(count(/^Heap\/UPDATE/)),
    hotUpdates: per(count(/^Heap\/HOT_UPDATE/)),
    heapDeletes: per(count(/^Heap\/DELETE/)),
    btreeEntries: per(count(/^Btree\/INSERT/)),
    commits: per(to.commits - from.commits),
    statements: per(Number(st.rows[0]?.calls ?? 0)),
  };
}

export async function taskCost(
  adminUrl: string,
  system: QueueSystem,
  n: number,
): Promise<TaskCostResult> {
  const url = await createDatabase(adminUrl, "cost");
  const db = new URL(url).pathname.slice(1);
  const admin = new pg.Client({ connectionString: url });
  await admin.connect();
  try {
    await admin.query("create extension if not exists pg_walinspect");
    await admin.query("create extension if not exists pg_stat_statements");
    await system.setup(url);
    await admin.query("checkpoint");
    await admin.query("select pg_stat_statements_reset()");
    const m0 = await mark(admin, db);
    await system.bulkEnqueue(n, 0);
    const m1 = await mark(admin, db);
    const enqueue = await phaseCost(admin, db, m0, m1, n);
    await admin.query("checkpoint");
    await admin.query("select pg_stat_statements_reset(), pg_stat_reset()");
    const m2 = await mark(admin, db);
    let handled = 0;
    const worker = await system.startWorker(10, async () => {
      await new Promise<void>((r) => setImmediate(r));
      handled++;
    });
    try {
      await until(() => handled >= n, 120_000, 10);
      await until(async () => (await system.remaining()) === 0, 60_000, 10);
    } finally {
      await worker.stop();
    }
    const m3 = await mark(admin, db);
    const drain = await phaseCost(admin, db, m2, m3, n);
    const fns = await admin.query<{ name: string; calls: string; self: number }>(
      `select schemaname || '.' || funcname as name, calls::text, self_time as self
       from pg_stat_user_functions order by self_time desc limit 12`,
    );
    return {
      system: system.label,
      tasks: n,
      enqueue,
      drain,
      functions: fns.rows.map((f) => ({
        name: f.name,
        callsPerTask: round(Number(f.calls) / n, 3),
        selfMsPerCall: round(f.self / Math.max(1, Number(f.calls)), 4),
      })),
    };
  } finally {
    await system.close();
    await admin.end();
    await dropDatabase(adminUrl, url);
  }
}

const costColumns = [
  "system",
  "phase",
  "WAL B",
  "heap ins",
  "upd",
  "HOT upd",
  "del",
  "btree entries",
  "commits",
  "statements",
];

export function renderTaskCost(results: TaskCostResult[]): string {
  const rows = results.flatMap((r) =>
    (["enqueue", "drain"] as const).map((phase) => {
      const c = r[phase];
      return [
        r.system,
        phase,
        c.walBytes,
        c.heapInserts,
        c.heapUpdates,
        c.hotUpdates,
        c.heapDeletes,
        c.btreeEntries,
        c.commits,
        c.statements,
      ].map(String);
    }),
  );
  return table([costColumns, ...rows]);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const args = process.argv.slice(2);
  const arg = (name: string) => args[args.indexOf(name) + 1];
  const n = args.includes("--tasks") ? Number(arg("--tasks")) : 5_000;
  const pick = args.includes("--systems") ? arg("--systems")?.split(",") : undefined;
  const server = await startBenchServer(taskCostServerFlags);
  try {
    const peers = await loadPeers();
    const systems: QueueSystem[] = [
      new HoldfastSystem(true),
      new HoldfastSystem(true, false),
      new peers.GraphileSystem(true),
    ];
    const results: TaskCostResult[] = [];
    for (const s of systems) {
      if (pick && !pick.some((p) => s.label.includes(p))) continue;
      results.push(await taskCost(server.url, s, n));
    }
    process.stdout.write(`${renderTaskCost(results)}\n`);
    for (const r of results) {
      if (r.functions.length === 0) continue;
      process.stdout.write(
        `\n${r.system}: SQL functions in the drain\n${table([
          ["function", "calls/task", "self ms/call"],
          ...r.functions.map((f) => [f.name, String(f.callsPerTask), String(f.selfMsPerCall)]),
        ])}\n`,
      );
    }
    process.stdout.write(`${JSON.stringify(results)}\n`);
  } finally {
    await server.stop();
  }
}
