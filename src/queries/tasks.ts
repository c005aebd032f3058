import type { Attempt, DeadLetter, Task } from "../types.js";

/** A row of holdfast.tasks as node-postgres returns it (int8 as string). */
export interface TaskRow {
  id: string;
  kind: string;
  key: string;
  payload: unknown;
  attempt: number;
  max_attempts: number;
  fence: string;
  priority: number;
  run_at: Date;
  created_at: Date;
  checkpoint?: unknown;
  checkpoint_at?: Date | null;
}

export function toTask(row: TaskRow): Task {
  return {
    id: Number(row.id),
    kind: row.kind,
    key: row.key,
    payload: row.payload,
    attempt: row.attempt,
    maxAttempts: row.max_attempts,
    fence: Number(row.fence),
    priority: row.priority,
    runAt: row.run_at,
    createdAt: row.created_at,
    checkpoint: row.checkpoint ?? null,
    checkpointAt: row.checkpoint_at ?? null,
  };
}

/** The leader's heartbeat channel: each sweep NOTIFYs it (see Sweeper). */
export const leaderChannel = "holdfast_leader";

/** Milliseconds from now until q.until (holdfast.quiet_until()): null when not quiet,
 *  Infinity for 'infinity'. Measured from the server's clock, so client clock skew cannot
 *  stretch it. */
const quietMs = `case when q.until = 'infinity' then 'Infinity'::float8
    else (extract(epoch from q.until - clock_timestamp()) * 1000)::float8 end`;

/** ms from now (server clock) until the timestamptz `at`; null stays null. */
const inMs = (at: string) => `(extract(epoch from ${at} - clock_timestamp()) * 1000)::float8`;
/**
 * The task columns the worker reads (TaskRow), named one by one: a statement that expanded a
 * row type (`c.*`, `(s.task).*`) would change its result type when a later migration adds a
 * column to holdfast.tasks, and Postgres refuses that under a prepared statement (0A000).
 */
const taskColumns = (t: string) =>
  ["id", "kind", "key", "payload", "attempt", "max_attempts", "fence", "priority", "run_at"]
    .concat(["created_at", "checkpoint", "checkpoint_at"])
    .map((c) => `${t}.${c}`)
    .join(", ");
const nullTaskColumns = `null::bigint, null::text, null::text, null::jsonb, null::int, null::int,
    null::bigint, null::int, null::timestamptz, null::timestamptz, null::jsonb, null::timestamptz`;

export const sql = {
  defineKind:
    "select holdfast.define_kind($1, $2, $3::interval, $4, $5, $6, $7, $8::interval, $9::interval, $10::interval, $11::text[], limits => $12::jsonb)",
  enqueue:
    "select id, deduped from holdfast.enqueue_task($1, $2, $3::jsonb, $4, $5, $6, $7, $8, $9::interval, $10::interval)",
  // A claim that gets nothing also says when the next task of these kinds is due, in the same
  // statement: every idle worker is woken by an enqueue and all but one come back empty, so
  // this saves each of them the next_run_at round trip (and its transaction). Only then: after
  // a claim that took keys, the statement's snapshot would still show them ready.
  // next_in_ms: that time as ms from now on the server's clock (a worker's clock may differ).
  claim: `with c as (select ${taskColumns("t")} from holdfast.claim($1::text[], $2, $3, $4, $5) t)
    select c.*, null::float8 as next_in_ms from c
    union all
    select ${nullTaskColumns}, ${inMs("holdfast.next_run_at($1::text[])")}
    where not exists (select from c)`,
  /** Completions and the next claim in one round trip (rows: rejected id, or a claimed task). */
  settle: `select s.rejected, ${taskColumns("(s.task)")} from holdfast.settle($1::bigint[], $2::bigint[], $3::text[], $4, $5, $6, $7, $8::bigint[], $9::bigint[], $10::text[]) s`,
  /** Completions sent by the LISTEN session for the lock session (pid $3): see Completer. */
  completeHeld:
    "select id, status from holdfast.complete_held($1::bigint[], $2::bigint[], $3::int)",
  nextRunAt: `select ${inMs("holdfast.next_run_at($1::text[])")} as in_ms`,
  completeMany: "select holdfast.complete_many($1::bigint[], $2::bigint[]) as rejected",
  release: "select holdfast.release($1::bigint[], $2::bigint[]) as rejected",
  fail: "select holdfast.fail($1, $2, $3, $4::interval, $5) as ok",
  cancel: "select holdfast.cancel($1) as ok",
  retry: "select holdfast.retry($1, $2) as ok",
  // The latest per kind first (tasks_finished, read backwards), so the read does not grow with
  // the dead letters kept.
  deadLetters: `select d.* from holdfast.kinds kd
    cross join lateral (select * from holdfast.dead_letters d where d.kind = kd.kind
      order by d.finished_at desc, d.id desc limit $2) d
    where ($1::text is null or kd.kind = $1) order by d.finished_at desc, d.id desc limit $2`,
  // $3: the lock session's release bound (ms), bounding the write transaction's idle time.
  assertFence: "select holdfast.assert_fence($1, $2, $3::int * interval '1 millisecond')",
  /** One state for each task id in $1, all of one run's fence $2 (false: any refused). */
  checkpoint:
    "select coalesce(bool_and(holdfast.checkpoint(i, $2, $3::jsonb)), false) as ok from unnest($1::bigint[]) i",
  handOver: "select holdfast.hand_over($1::bigint[], $2::bigint[]) as ok",
  // A follower that fails to lead learns from the same statement whether the leader may be
  // quiet (no heartbeat expected before quiet_ms, see Sweeper).
  tryLead: `select q.leader, ${quietMs} as quiet_ms
    from (select holdfast.try_lead() as leader, holdfast.quiet_until() as until) q`,
  // The previous holders come from the statement's snapshot, taken before sweep() changed
  // anything (a volatile function's writes are invisible to its calling statement), and are
  // read only when something was requeued: the idle sweep costs nothing more. The NOTIFY is
  // the leader's heartbeat (see Sweeper), sent in the sweep's transaction; its payload is the
  // quiet deadline (epoch ms, 'infinity', or '' when not quiet). quiet_until() reads from q,
  // which reads from s: it runs after sweep() and sees what it requeued.
  sweep: `with s as materialized (select holdfast.sweep() as requeued),
    q as materialized (select s.requeued, holdfast.quiet_until() as until from s)
    select q.requeued, case when q.requeued > 0 then (
      select json_agg(json_build_object('task', o.id, 'key', o.key, 'kind', o.kind,
        'attempt', o.attempt, 'worker', o.worker, 'pid', o.holder_pid) order by o.id)
      from holdfast.orphans o) end as previous,
      ${quietMs} as quiet_ms,
      pg_notify('${leaderChannel}', coalesce(case when q.until = 'infinity' then 'infinity'
        else floor(extract(epoch from q.until) * 1000)::bigint::text end, '')) is null as heartbeat
    from q`,
} as const;

/** A row of holdfast.dead_letters. */
export interface DeadLetterRow extends Omit<TaskRow, "fence" | "priority" | "run_at"> {
  last_error: DeadLetter["lastError"];
  finished_at: Date;
  attempts: Array<{
    attempt: number;
    worker: string | null;
    started_at: string;
    finished_at: string | null;
    outcome: Attempt["outcome"];
    error: Attempt["error"];
  }> | null;
}

export function toDeadLetter(row: DeadLetterRow): DeadLetter {
  return {
    id: Number(row.id),
    kind: row.kind,
    key: row.key,
    payload: row.payload,
    attempt: row.attempt,
    maxAttempts: row.max_attempts,
    lastError: row.last_error,
    createdAt: row.created_at,
    finishedAt: row.finished_at,
    attempts: (row.attempts ?? []).map((a) => ({
      attempt: a.attempt,
      worker: a.worker,
      startedAt: new Date(a.started_at),
      finishedAt: a.finished_at === null ? null : new Date(a.finished_at),
      outcome: a.outcome,
      error: a.error,
    })),
  };
}
