// What happened, beside the snapshot's "what holds what now": attempts per minute, run times,
// the longest-waiting tasks, dead letters and one task's history. Read-only queries on tables
// holdfast_observer may read; run them inside `readOnly` for one consistent picture.
import type pg from "pg";
import { type DeadLetterRow, sql as taskQueries, toDeadLetter } from "../queries/tasks.js";
import type { DeadLetter } from "../types.js";
import {
  activitySinceSql,
  activitySql,
  keyTasksSql,
  taskAttemptsSql,
  taskSql,
  waitingSql,
} from "./queries.js";
import { ms, num } from "./snapshot.js";

/** Attempts of one kind in one minute. */
export interface MinuteCounts {
  /** Start of the minute, epoch ms. */
  at: number;
  started: number;
  succeeded: number;
  failed: number;
  lost: number;
  cancelled: number;
}

export type Outcome = "succeeded" | "failed" | "lost" | "cancelled";

export interface KindActivity {
  kind: string;
  /** One entry per minute, oldest first; the last one is the current (partial) minute. */
  minutes: MinuteCounts[];
  /** Attempts that succeeded or failed in the window, and their run time. */
  runs: number;
  p50Ms: number | null;
  p95Ms: number | null;
}

export interface Activity {
  /** Start of the window, epoch ms (a whole minute). */
  since: number;
  minutes: number;
  kinds: KindActivity[];
}

/** Attempts started and ended per minute and kind over the last `minutes`, and run times. */
export async function readActivity(
  client: pg.ClientBase,
  kinds: string[],
  minutes = 60,
): Promise<Activity> {
  const since = Number((await client.query(activitySinceSql, [minutes])).rows[0].since_ms);
  const { rows } = await client.query<{
    kind: string;
    what: string;
    minute_ms: number | null;
    n: number;
    p50_ms: number | null;
    p95_ms: number | null;
  }>(activitySql, [since]);
  const byKind = new Map<string, KindActivity>();
  const kindOf = (kind: string): KindActivity => {
    let k = byKind.get(kind);
    if (!k) {
      k = {
        kind,
        minutes: Array.from({ length: minutes }, (_, i) => ({
          at: since + i * 60_000,
          started: 0,
          succeeded: 0,
          failed: 0,
          lost: 0,
          cancelled: 0,
        })),
        runs: 0,
        p50Ms: null,
        p95Ms: null,
      };
      byKind.set(kind, k);
    }
    return k;
  };
  for (const kind of kinds) kindOf(kind);
  for (const r of rows) {
    const k = kindOf(r.kind);
    if (r.what === "runs") {
      k.runs = r.n;
      k.p50Ms = ms(r.p50_ms);
      k.p95Ms = ms(r.p95_ms);
      continue;
    }
    const i = Math.round((Number(r.minute_ms) - since) / 60_000);
    const m = k.minutes[Math.min(Math.max(i, 0), minutes - 1)];
    if (m && (r.what === "started" || isOutcome(r.what))) m[r.what] += r.n;
  }
  return {
    since,
    minutes,
    kinds: [...byKind.values()].sort((a, b) => a.kind.localeCompare(b.kind)),
  };
}

const isOutcome = (s: string): s is Outcome =>
  s === "succeeded" || s === "failed" || s === "lost" || s === "cancelled";

/** A ready task that has not started. */
export interface WaitingTask {
  id: number;
  kind: string;
  key: string;
  attempt: number;
  maxAttempts: number;
  /** Its key runs another task meanwhile (it waits its turn). */
  keyBusy: boolean;
  /** The task that starts next on its key, when that is another one (an earlier task
   *  waiting out a retry's backoff keeps its place); null when this task is next. */
  behind: number | null;
  /** Since its run_at. */
  waitingMs: number;
  /** The error of its previous attempt, if it is a retry. */
  lastError: string | null;
}

/** The `limit` ready tasks waiting longest to start. */
export async function readWaiting(client: pg.ClientBase, limit = 10): Promise<WaitingTask[]> {
  const { rows } = await client.query(waitingSql, [limit]);
  return rows.map((r) => ({
    id: Number(r.id),
    kind: r.kind,
    key: r.key,
    attempt: r.attempt,
    maxAttempts: r.max_attempts,
    keyBusy: r.busy,
    behind: num(r.behind),
    waitingMs: ms(r.waiting_ms) ?? 0,
    lastError: r.last_error,
  }));
}

/** The latest dead letters (the query `hf.deadLetters()` runs). */
export async function readDeadLetters(client: pg.ClientBase, limit = 20): Promise<DeadLetter[]> {
  const { rows } = await client.query<DeadLetterRow>(taskQueries.deadLetters, [null, limit]);
  return rows.map(toDeadLetter);
}

export type TaskState = "pending" | "running" | "succeeded" | "failed" | "cancelled";

/** One ended attempt (or the running one, `outcome` null), with the fence it ran under. */
export interface AttemptRecord {
  attempt: number;
  fence: number;
  worker: string | null;
  pid: number | null;
  startedAt: Date;
  finishedAt: Date | null;
  outcome: Outcome | null;
  error: { message?: string; stack?: string } | null;
}

export interface TaskDetail {
  id: number;
  kind: string;
  key: string;
  payload: unknown;
  state: TaskState;
  priority: number;
  /** Earliest start. */
  runAt: Date;
  /** Its place in its key's order (kept through crashes and strict-order retries). */
  placeAt: Date;
  attempt: number;
  maxAttempts: number;
  dedupeKey: string | null;
  fence: number | null;
  worker: string | null;
  holderPid: number | null;
  cancelRequested: boolean;
  lastError: { message?: string; stack?: string } | null;
  createdAt: Date;
  startedAt: Date | null;
  finishedAt: Date | null;
  /** The key's latest fence: higher than this task's once another claim of the key happened. */
  keyFence: number;
  /** The task's checkpoint (ctx.checkpoint): its value, when and under which fence (which
   *  run) it was written; null when it has none (a success clears it unless the kind keeps it). */
  checkpoint: { state: unknown; at: Date; fence: number } | null;
  /** Attempts oldest first; a running attempt last, with outcome null. */
  attempts: AttemptRecord[];
  /** The key's open tasks in the order they start (this one included), at most 20. */
  keyQueue: Array<{
    id: number;
    kind: string;
    state: TaskState;
    priority: number;
    runAt: Date;
    placeAt: Date;
    attempt: number;
    maxAttempts: number;
  }>;
}

/** One task with its attempts and its key's queue; null when no task has this id. */
export async function readTask(client: pg.ClientBase, id: number): Promise<TaskDetail | null> {
  const t = (await client.query(taskSql, [id])).rows[0];
  if (!t) return null;
  const attempts = await client.query(taskAttemptsSql, [id]);
  const queue = await client.query(keyTasksSql, [t.key, 20]);
  const records: AttemptRecord[] = attempts.rows.map((a) => ({
    attempt: a.attempt,
    fence: Number(a.fence),
    worker: a.worker,
    pid: a.pid,
    startedAt: a.started_at,
    finishedAt: a.finished_at,
    outcome: a.outcome,
    error: a.error,
  }));
  if (t.state === "running" && !records.some((a) => a.attempt === t.attempt))
    records.push({
      attempt: t.attempt,
      fence: Number(t.fence),
      worker: t.worker,
      pid: t.holder_pid,
      startedAt: t.started_at,
      finishedAt: null,
      outcome: null,
      error: null,
    });
  return {
    id: Number(t.id),
    kind: t.kind,
    key: t.key,
    payload: t.payload,
    state: t.state,
    priority: t.priority,
    runAt: t.run_at,
    placeAt: t.place_at,
    attempt: t.attempt,
    maxAttempts: t.max_attempts,
    dedupeKey: t.dedupe_key,
    fence: num(t.fence),
    worker: t.worker,
    holderPid: t.holder_pid,
    cancelRequested: t.cancel_requested,
    lastError: t.last_error,
    createdAt: t.created_at,
    startedAt: t.started_at,
    finishedAt: t.finished_at,
    keyFence: Number(t.key_fence),
    checkpoint:
      t.checkpoint === null || t.checkpoint_at === null
        ? null
        : { state: t.checkpoint, at: t.checkpoint_at, fence: Number(t.checkpoint_fence) },
    attempts: records,
    keyQueue: queue.rows.map((q) => ({
      id: Number(q.id),
      kind: q.kind,
      state: q.state,
      priority: q.priority,
      runAt: q.run_at,
      placeAt: q.place_at,
      attempt: q.attempt,
      maxAttempts: q.max_attempts,
    })),
  };
}
