import type pg from "pg";
import { type LimitUsage, toLimitUsage } from "../limits.js";
import { packageVersion, releaseSchemaVersion, schemaVersionSql } from "../migrate.js";
import { parseCron, upcomingTick } from "../schedules.js";
import {
  capacitySql,
  holdersSql,
  limitsReadableSql,
  limitsSql,
  orphansSql,
  queueSql,
  schedulesSql,
  waitersSql,
} from "./queries.js";

/** Version of the `--json` shape (docs/inspect.schema.json); bumped on any breaking change. */
export const snapshotVersion = 4;

export interface InspectFilters {
  /** Only this key. */
  key?: string | undefined;
  /** Only this kind. */
  kind?: string | undefined;
}

/** A session holding a key's advisory lock, with the task it runs (null fields: no task). */
export interface Holder {
  key: string;
  kind: string | null;
  taskId: number | null;
  attempt: number | null;
  maxAttempts: number | null;
  fence: number | null;
  worker: string | null;
  pid: number;
  applicationName: string | null;
  /** Null for a Unix socket, or when this role may not see other roles' sessions. */
  clientAddr: string | null;
  heldForMs: number | null;
  /** The task's checkpoint (ctx.checkpoint): its `progress` (0 to 1) and `note`, null when
   *  it has none, and its age (null: no checkpoint). A run whose checkpoint grows old while
   *  it is held may be stuck. */
  progress: number | null;
  note: string | null;
  checkpointAgeMs: number | null;
  /** Whether this run wrote it (false: it resumed from an earlier attempt's, or has none). */
  checkpointedThisRun: boolean;
}

/** A session blocked in pg_advisory_lock on a holdfast key. */
export interface Waiter {
  key: string;
  pid: number;
  applicationName: string | null;
  clientAddr: string | null;
  waitingMs: number | null;
  /** Pids of the sessions it waits for (usually the key's holder). */
  blockedBy: number[];
}

/** A task `running` whose holder session is gone and whose key lock is free. */
export interface Orphan {
  key: string;
  kind: string;
  taskId: number;
  attempt: number;
  fence: number;
  worker: string | null;
  holderPid: number | null;
  /** Since the lost attempt started: the holder died at some point within this time. */
  runningForMs: number;
}

export interface QueueRow {
  kind: string;
  /** Ready now (run_at reached). */
  pending: number;
  running: number;
  /** Pending with a future run_at (delayed or waiting for a retry backoff). */
  delayed: number;
  /** state 'failed': attempts used up. */
  deadLettered: number;
  /** How long the oldest ready task has been waiting since its run_at; null when none. */
  oldestPendingMs: number | null;
  /** A capped kind's slots held now and its cap (maxRunning); null when uncapped. */
  slots: { used: number; max: number } | null;
}

/** A recurring schedule and its next tick. */
export interface ScheduleInfo {
  name: string;
  kind: string;
  key: string;
  cron: string;
  timezone: string | null;
  /** ISO time of the next tick; null when the expression has none or does not parse. */
  nextAt: string | null;
  /** ISO time of the latest tick enqueued, the task it enqueued, and how late (ms after the
   *  tick) it was enqueued. */
  lastTickAt: string | null;
  lastTaskId: number | null;
  lastLateMs: number | null;
}

/** A limit (docs/limits.md) and what its window holds now, as in the JSON snapshot: times are
 *  ISO strings (closedUntil: a throttle closed it until then; roomAt: room frees for its
 *  largest reservation then; null: open, or room now). */
export type LimitInfo = Omit<LimitUsage, "closedUntil" | "roomAt"> & {
  closedUntil: string | null;
  roomAt: string | null;
};

export interface Capacity {
  advisoryLocks: {
    /** Advisory locks of every database on the server (they share one lock table). */
    used: number;
    /** Of which holdfast key locks held (granted) in this database. */
    holdfast: number;
    /** max_locks_per_transaction × (max_connections + max_prepared_transactions). */
    lockTableSize: number;
    maxLocksPerTransaction: number;
    maxPreparedTransactions: number;
  };
  connections: {
    /** Sessions of this database named holdfast:lock:* (one per worker process). */
    lockSessions: number;
    /** Sessions of this database named holdfast:listen:* (one per worker process). */
    listenSessions: number;
    /** Client backends on the whole server. */
    used: number;
    max: number;
  };
}

/** The database's clock, and this inspecting host's offset from it. Workers measure their own
 *  (at start, on each reconnect, then every minute): their log's clock_skew warning past 1 s
 *  and their metric holdfast_clock_offset_seconds. */
export interface ClockInfo {
  /** ISO time of the database's clock (clock_timestamp()) during the snapshot. */
  serverAt: string;
  /** The database's clock minus this host's, in ms (positive: this host is behind), to within
   *  half the round trip. Times in the snapshot are the database's. */
  offsetMs: number;
}

/** What runs where: this package, the database's schema, the schema this package ships. */
export interface Versions {
  package: string;
  /** The last migration applied (null: none, or this role may not read holdfast.migrations). */
  schema: string | null;
  /** This package's last migration: a schema behind it needs migrate; ahead, a newer release
   *  migrated the database. */
  releaseSchema: string;
}

export interface Snapshot {
  version: typeof snapshotVersion;
  versions: Versions;
  /** ISO time of the snapshot (this host's clock). */
  at: string;
  database: string;
  filters: { key: string | null; kind: string | null };
  /** false when orphans or dead-lettered tasks exist (exit code 1). */
  healthy: boolean;
  /** Human-readable reasons for healthy = false. */
  problems: string[];
  holders: Holder[];
  waiters: Waiter[];
  orphans: Orphan[];
  queue: QueueRow[];
  schedules: ScheduleInfo[];
  /** Limits (with a kind filter: those its kind draws on). */
  limits: LimitInfo[];
  capacity: Capacity;
  clock: ClockInfo;
}

export const num = (v: string | number | null): number | null => (v === null ? null : Number(v));
/** A duration in whole milliseconds, never negative (clock skew between statements). */
export const ms = (v: number | null): number | null =>
  v === null ? null : Math.max(0, Math.round(v));

/** Runs `fn` in one read-only transaction: one consistent picture, fine for a SELECT-only role. */
export async function readOnly<T>(client: pg.ClientBase, fn: () => Promise<T>): Promise<T> {
  await client.query("begin transaction read only");
  try {
    const result = await fn();
    await client.query("commit");
    return result;
  } catch (err) {
    await client.query("rollback").catch(() => {});
    throw err;
  }
}

/** The versions (the schema's from holdfast.migrations, when this role may read it). */
export async function readVersions(client: pg.ClientBase): Promise<Versions> {
  const { rows } = await client.query<{ readable: boolean | null }>(
    "select has_table_privilege(to_regclass('holdfast.migrations'), 'select') as readable",
  );
  const schema = rows[0]?.readable
    ? ((await client.query<{ name: string | null }>(schemaVersionSql)).rows[0]?.name ?? null)
    : null;
  const [pkg, release] = await Promise.all([packageVersion(), releaseSchemaVersion()]);
  return { package: pkg, schema, releaseSchema: release };
}

/** Reads one consistent picture in a read-only transaction (works for a SELECT-only role). */
export async function takeSnapshot(
  client: pg.ClientBase,
  filters: InspectFilters = {},
): Promise<Snapshot> {
  return await readOnly(client, () => readSnapshot(client, filters));
}

/** The snapshot's queries, in the caller's transaction (the dashboard adds its own reads). */
export async function readSnapshot(
  client: pg.ClientBase,
  filters: InspectFilters = {},
): Promise<Snapshot> {
  const args = [filters.key ?? null, filters.kind ?? null];
  const holders = await client.query(holdersSql, args);
  const waiters = await client.query(waitersSql, args);
  const orphans = await client.query(orphansSql, args);
  const queue = await client.query(queueSql, args);
  const schedules = await client.query(schedulesSql, args);
  // A role that may not read the limits' tables sees none (the rest of the snapshot stands).
  const readable = (await client.query(limitsReadableSql)).rows[0]?.ok === true;
  const limits = (readable ? (await client.query(limitsSql)).rows : [])
    .map(toLimitUsage)
    .filter((l) => !filters.kind || l.kinds.includes(filters.kind));
  const t0 = Date.now();
  const cap = (await client.query(capacitySql)).rows[0];
  const localMs = (t0 + Date.now()) / 2;
  const serverNow = new Date(Math.round(cap.server_ms));
  const snapshot: Snapshot = {
    version: snapshotVersion,
    versions: await readVersions(client),
    at: new Date().toISOString(),
    database: cap.database,
    filters: { key: filters.key ?? null, kind: filters.kind ?? null },
    healthy: true,
    problems: [],
    holders: holders.rows.map((r) => ({
      key: r.key,
      kind: r.kind,
      taskId: num(r.task_id),
      attempt: r.attempt,
      maxAttempts: r.max_attempts,
      fence: num(r.fence),
      worker: r.worker,
      pid: r.pid,
      applicationName: r.application_name,
      clientAddr: r.client_addr,
      heldForMs: ms(r.held_for_ms),
      progress: r.progress,
      note: r.note,
      checkpointAgeMs: ms(r.checkpoint_age_ms),
      checkpointedThisRun: r.checkpointed_this_run === true,
    })),
    waiters: waiters.rows.map((r) => ({
      key: r.key,
      pid: r.pid,
      applicationName: r.application_name,
      clientAddr: r.client_addr,
      waitingMs: ms(r.waiting_ms),
      blockedBy: r.blocked_by ?? [],
    })),
    orphans: orphans.rows.map((r) => ({
      key: r.key,
      kind: r.kind,
      taskId: Number(r.task_id),
      attempt: r.attempt,
      fence: Number(r.fence),
      worker: r.worker,
      holderPid: r.holder_pid,
      runningForMs: ms(r.running_for_ms) ?? 0,
    })),
    queue: queue.rows.map((r) => ({
      kind: r.kind,
      pending: r.pending,
      running: r.running,
      delayed: r.delayed,
      deadLettered: r.dead_lettered,
      oldestPendingMs: ms(r.oldest_pending_ms),
      slots: r.max_running === null ? null : { used: r.slots_used, max: r.max_running },
    })),
    schedules: schedules.rows.map((r) => ({
      name: r.name,
      kind: r.kind,
      key: r.key,
      cron: r.cron,
      timezone: r.timezone,
      nextAt: nextTick(r, serverNow)?.toISOString() ?? null,
      lastTickAt: r.last_tick_at?.toISOString() ?? null,
      lastTaskId: r.last_task_id === null ? null : Number(r.last_task_id),
      lastLateMs: r.last_late_ms === null ? null : Number(r.last_late_ms),
    })),
    limits: limits.map((l) => ({
      name: l.name,
      units: l.units,
      perMs: l.perMs,
      used: l.used,
      reserved: l.reserved,
      charged: l.charged,
      runs: l.runs,
      closedUntil: l.closedUntil?.toISOString() ?? null,
      kinds: l.kinds,
      waiting: l.waiting,
      roomAt: l.roomAt?.toISOString() ?? null,
    })),
    capacity: {
      advisoryLocks: {
        used: cap.advisory_locks,
        holdfast: cap.holdfast_locks,
        lockTableSize:
          cap.max_locks_per_transaction * (cap.max_connections + cap.max_prepared_transactions),
        maxLocksPerTransaction: cap.max_locks_per_transaction,
        maxPreparedTransactions: cap.max_prepared_transactions,
      },
      connections: {
        lockSessions: cap.lock_sessions,
        listenSessions: cap.listen_sessions,
        used: cap.client_connections,
        max: cap.max_connections,
      },
    },
    clock: { serverAt: serverNow.toISOString(), offsetMs: Math.round(cap.server_ms - localMs) },
  };
  snapshot.problems = problemsOf(snapshot);
  snapshot.healthy = snapshot.problems.length === 0;
  return snapshot;
}

/** The leader's next tick, or (no leader has read this definition yet) the one it will compute
 *  (on the database's clock, `now`). */
function nextTick(
  r: { cron: string; timezone: string | null; next_at: Date | null; covered_until: Date },
  now: Date,
): Date | null {
  if (r.next_at) return r.next_at;
  try {
    return upcomingTick(parseCron(r.cron, r.timezone), r.covered_until, now);
  } catch {
    return null;
  }
}

function problemsOf(s: Snapshot): string[] {
  const problems: string[] = [];
  const n = s.orphans.length;
  if (n > 0) problems.push(`${n} orphaned task${n === 1 ? "" : "s"}`);
  const dead = s.queue.reduce((sum, q) => sum + q.deadLettered, 0);
  if (dead > 0) problems.push(`${dead} dead-lettered task${dead === 1 ? "" : "s"}`);
  return problems;
}
