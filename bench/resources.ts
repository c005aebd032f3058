import pg from "pg";
import { createDatabase, dropDatabase, sleep } from "./db.js";
import { round } from "./stats.js";
import type { QueueSystem } from "./systems/types.js";

/** Longer than pg.Pool's default idleTimeoutMillis (10 s) and than an idle backend's delay in
 *  reporting its transactions to pg_stat_database (10 s). */
const STATS_LAG_MS = 11_000;

export interface ResourceResult {
  system: string;
  concurrency: number;
  /** Connections the worker opened that are still open after 11 s idle. */
  connections: number;
  /** Transactions per second the idle worker ran (pg_stat_database xact deltas). */
  idleXactPerSecond: number;
}

async function stat(admin: pg.Client, db: string): Promise<{ pids: number[]; xacts: number }> {
  const { rows } = await admin.query<{ pids: number[]; xacts: string }>(
    `select array(select pid from pg_stat_activity where datname = $1) as pids,
            (select xact_commit + xact_rollback from pg_stat_database where datname = $1) as xacts`,
    [db],
  );
  return { pids: rows[0]?.pids ?? [], xacts: Number(rows[0]?.xacts ?? 0) };
}

/**
 * Idle cost of one worker process per system and concurrency, all measured in the same window
 * (each in its own database). pg_stat_database counters are flushed by backends about once a
 * second, so the window is long and the rate approximate.
 */
export async function idleResources(
  adminUrl: string,
  systems: Array<{ make: () => QueueSystem; concurrency: number }>,
  windowMs: number,
): Promise<ResourceResult[]> {
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  const setups = await Promise.all(
    systems.map(async ({ make, concurrency }) => {
      const sys = make();
      const url = await createDatabase(adminUrl, "idle");
      await sys.setup(url);
      return { sys, url, db: new URL(url).pathname.slice(1), concurrency };
    }),
  );
  const before = await Promise.all(setups.map((s) => stat(admin, s.db)));
  const workers = await Promise.all(
    setups.map((s) => s.sys.startWorker(s.concurrency, async () => {})),
  );
  // The window starts once start-up is over and counted: an idle backend reports its
  // transactions to pg_stat_database up to 10 s late (PostgreSQL 15+), so a window that starts
  // sooner counts start-up work as idle cost. By then the pools have also closed the clients
  // that start-up used and left idle (pg.Pool's default idleTimeoutMillis is 10 s), so the
  // connections counted are those an idle worker keeps.
  await sleep(STATS_LAG_MS);
  const mid = await Promise.all(setups.map((s) => stat(admin, s.db)));
  await sleep(windowMs);
  const after = await Promise.all(setups.map((s) => stat(admin, s.db)));
  const out = setups.map((s, i) => ({
    system: s.sys.label,
    concurrency: s.concurrency,
    // Sessions opened by the worker (setup's own connections existed before) and still open.
    connections: (mid[i]?.pids ?? []).filter((p) => !(before[i]?.pids ?? []).includes(p)).length,
    idleXactPerSecond: round(
      ((after[i]?.xacts ?? 0) - (mid[i]?.xacts ?? 0)) / (windowMs / 1000),
      1,
    ),
  }));
  await Promise.all(workers.map((w) => w.stop().catch(() => {})));
  await Promise.all(setups.map((s) => s.sys.close().catch(() => {})));
  await admin.end();
  await Promise.all(setups.map((s) => dropDatabase(adminUrl, s.url)));
  return out;
}
