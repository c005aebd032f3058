import type pg from "pg";
import type { Logger } from "pino";
import {
  HoldfastError,
  InvalidArgumentError,
  StaleFenceError,
  TaskCancelledError,
  ThrottledError,
  translateError,
} from "../errors.js";
import { isUnits, limitSql } from "../limits.js";
import type { ResolvedKind } from "../options.js";
import { sql, type TaskRow, toTask } from "../queries/tasks.js";
import { traceEvent } from "../tracing.js";
import type { CheckpointOptions, HandlerContext, Queryable, Task } from "../types.js";
import type { LockSession } from "./lock-session.js";

/** handed_over: stopped by a shutdown after a checkpoint, given back without an attempt;
 *  throttled: a ThrottledError closed its limit and gave the run back without an attempt. */
export type Outcome =
  | "succeeded"
  | "failed"
  | "cancelled"
  | "lost"
  | "rejected"
  | "handed_over"
  | "throttled";

/** One handler call: a single task, or the tasks of one key claimed together (a batch). */
export interface Run {
  task: Task;
  tasks: Task[];
  controller: AbortController;
  session: LockSession;
  logger: Logger;
}

export interface Settlement {
  run: Run;
  error?: unknown;
  /** Stopped by its worker's shutdown: given back (hand_over) if it checkpointed. */
  handOver?: boolean;
}

/** A run of claimed tasks (one, or a batch of one key), with its logger and abort signal. */
export function newRun(session: LockSession, tasks: Task[], parent: Logger): Run {
  const task = tasks[0] as Task;
  const logger = parent.child({
    task: tasks.length > 1 ? tasks.map((t) => t.id) : task.id,
    kind: task.kind,
    key: task.key,
    attempt: task.attempt,
    fence: task.fence,
  });
  return { task, tasks, controller: new AbortController(), session, logger };
}

/** Calls the kind's handler for the run; resolves or rejects as the handler does. `pool`: the
 *  app's pool, through which a checkpoint without `{ client }` is written. */
export async function callHandler(
  kind: ResolvedKind | undefined,
  run: Run,
  pool: pg.Pool,
): Promise<void> {
  const { task, tasks, controller, logger } = run;
  if (!kind) throw new HoldfastError("HF_CONFIG", `holdfast: no handler for kind ${task.kind}`);
  const ctxFor = (own: Task[]): HandlerContext => ({
    signal: controller.signal,
    logger,
    assertFence: async (client: Queryable) => {
      try {
        await client.query(sql.assertFence, [task.key, task.fence, run.session.releaseBoundMs]);
      } catch (err) {
        throw translateError(err);
      }
    },
    checkpoint: (state, options) => writeCheckpoint(run, own, pool, state, options),
    charge: (limit, units) => writeCharge(run, pool, limit, units),
  });
  if (kind.batch) await kind.handler(tasks, ctxFor(tasks));
  // Several tasks for a single-task handler (another worker set a batch size for this kind):
  // run them one after another under the lock this run holds, each checkpointing its own.
  else for (const t of tasks) await kind.handler(t, ctxFor([t]));
}

/**
 * holdfast.checkpoint for `own` (or options.task) under the run's fence, on options.client or
 * a connection of the pool: the SQL checks the fence and the holder, so any connection will do.
 * Refused: the run no longer holds its task; its signal is aborted and StaleFenceError thrown.
 */
async function writeCheckpoint(
  run: Run,
  own: Task[],
  pool: pg.Pool,
  state: unknown,
  options: CheckpointOptions = {},
): Promise<void> {
  const json = state === undefined ? undefined : JSON.stringify(state);
  if (json === undefined)
    throw new InvalidArgumentError("holdfast: a checkpoint must be a JSON value");
  let targets = own;
  if (options.task !== undefined) {
    const id = typeof options.task === "number" ? options.task : options.task.id;
    targets = own.filter((t) => t.id === id);
    if (targets.length === 0)
      throw new InvalidArgumentError(`holdfast: task ${id} is not one of this run's tasks`);
  }
  const values = [targets.map((t) => t.id), run.task.fence, json];
  let ok: boolean | undefined;
  try {
    const result = (await (options.client ?? pool).query(sql.checkpoint, values)) as {
      rows: Array<{ ok: boolean }>;
    };
    ok = result.rows[0]?.ok;
  } catch (err) {
    throw translateError(err);
  }
  if (ok) {
    traceEvent(run, "holdfast.checkpoint", {
      "holdfast.task.ids": targets.map((t) => t.id).join(","),
    });
    return;
  }
  const err = new StaleFenceError(
    `holdfast: checkpoint refused: task ${targets.map((t) => t.id).join(", ")} is no longer held by this run (fence ${run.task.fence})`,
  );
  run.logger.warn({ event: "checkpoint_refused" }, err.message);
  if (!run.controller.signal.aborted) run.controller.abort(err);
  throw err;
}

/** holdfast.charge for the run (its first task and fence) through the pool; a refused charge
 *  (the run no longer holds its task) aborts the run's signal and throws StaleFenceError. */
async function writeCharge(run: Run, pool: pg.Pool, limit: string, units: number): Promise<void> {
  if (typeof limit !== "string" || limit === "")
    throw new InvalidArgumentError("holdfast: charge needs a limit name");
  if (!isUnits(units, 0))
    throw new InvalidArgumentError("holdfast: a charge must be a whole number of units, 0 or more");
  let ok: boolean | undefined;
  try {
    const result = await pool.query<{ ok: boolean }>(limitSql.charge, [
      run.task.id,
      run.task.fence,
      limit,
      units,
    ]);
    ok = result.rows[0]?.ok;
  } catch (err) {
    throw translateError(err);
  }
  if (ok) return;
  const err = new StaleFenceError(
    `holdfast: charge refused: task ${run.task.id} is no longer held by this run (fence ${run.task.fence})`,
  );
  run.logger.warn({ event: "charge_refused", limit }, err.message);
  if (!run.controller.signal.aborted) run.controller.abort(err);
  throw err;
}

/** Groups claimed rows into runs: one key's tasks share the claim's fence, in the key's order. */
export function groupRuns(rows: TaskRow[]): Task[][] {
  const runs = new Map<string, Task[]>();
  for (const row of rows) {
    const task = toTask(row);
    const id = `${task.fence}:${task.key}`;
    runs.set(id, [...(runs.get(id) ?? []), task]);
  }
  return [...runs.values()];
}

type Finish = (run: Run, task: Task, outcome: Outcome, error?: unknown) => void;

/** Reports failed runs on `session`, each task by its own fail() call. */
export async function reportFailures(
  session: LockSession,
  failed: Settlement[],
  finish: Finish,
): Promise<void> {
  for (const s of failed) {
    // A run stopped by a shutdown after it checkpointed goes back to pending in its place,
    // its attempt not counted; otherwise it is a failed attempt like any other.
    if (s.handOver) {
      const ids = s.run.tasks.map((t) => t.id);
      const [row] = await session.query<{ ok: boolean }>(sql.handOver, [
        ids,
        s.run.tasks.map(() => s.run.task.fence),
      ]);
      if (row?.ok) {
        for (const t of s.run.tasks) finish(s.run, t, "handed_over", s.error);
        continue;
      }
    }
    // A provider's 429: the limit closes for every worker and the run goes back in its place,
    // its attempt not counted (holdfast.throttle); refused, it is reported like any failure.
    if (s.error instanceof ThrottledError && !s.run.controller.signal.aborted) {
      if (await throttle(session, s.run, s.error)) {
        for (const t of s.run.tasks) finish(s.run, t, "throttled", s.error);
        continue;
      }
    }
    const err = s.error instanceof Error ? s.error : new Error(String(s.error));
    const cancelled = s.run.controller.signal.reason instanceof TaskCancelledError;
    for (const t of s.run.tasks) {
      const [row] = await session.query<{ ok: boolean }>(sql.fail, [
        t.id,
        t.fence,
        `${err.name}: ${err.message}`,
        null,
        err.stack ?? null,
      ]);
      // A cancel notice follows a committed cancel request, so fail() recorded 'cancelled'.
      const outcome = !row?.ok ? "rejected" : cancelled ? "cancelled" : "failed";
      finish(s.run, t, outcome, s.error);
    }
  }
}

/** holdfast.throttle for a run on its lock session. A limit the SQL does not know (HF002) is
 *  the handler's mistake, not the session's: logged, and the run is reported as failed. */
async function throttle(session: LockSession, run: Run, error: ThrottledError): Promise<boolean> {
  try {
    const [row] = await session.query<{ ok: boolean }>(limitSql.throttle, [
      run.task.id,
      run.task.fence,
      error.limit,
      error.retryAfterMs,
    ]);
    return row?.ok === true;
  } catch (err) {
    const e = translateError(err);
    if (!(e instanceof InvalidArgumentError)) throw err;
    run.logger.warn({ event: "throttle_refused", err: e }, e.message);
    return false;
  }
}

export interface ClaimRequest {
  kinds: string[];
  worker: string;
  maxTasks: number;
  maxKeys: number;
  /** Keys whose runs start now; the rest are claimed ahead (prefetch), not yet started. */
  startKeys: number;
}

/** Claimed rows; `nextInMs` when the claim got nothing and said when the next task is due
 *  (ms from now on the server's clock; null: none). */
export interface Claimed {
  rows: TaskRow[];
  nextInMs?: number | null;
}

/**
 * Releases the key locks of runs the completer reported (`unlockKeys`), records the start of
 * runs claimed ahead (`started`), completes the succeeded runs and claims
 * (when maxKeys > 0) in one round trip and one commit; with nothing else to do, claims directly
 * (the wake path). Returns the claimed rows.
 */
export async function settle(
  session: LockSession,
  succeeded: Settlement[],
  started: Task[],
  unlockKeys: string[],
  claim: ClaimRequest,
  finish: Finish,
): Promise<Claimed> {
  const done = succeeded.flatMap((s) => s.run.tasks.map((t) => ({ run: s.run, t })));
  if (done.length === 0 && started.length === 0 && unlockKeys.length === 0) {
    if (claim.maxKeys <= 0) return { rows: [] };
    const rows = await session.query<TaskRow & { next_in_ms: number | null }>(sql.claim, [
      claim.kinds,
      claim.worker,
      claim.maxTasks,
      claim.maxKeys,
      claim.startKeys,
    ]);
    const claimed = rows.filter((r) => r.id !== null);
    return claimed.length > 0
      ? { rows: claimed }
      : { rows: [], nextInMs: rows[0]?.next_in_ms ?? null };
  }
  const rows = await session.query<TaskRow & { rejected: string | null }>(sql.settle, [
    done.map((d) => d.t.id),
    done.map((d) => d.t.fence),
    claim.kinds,
    claim.worker,
    claim.maxKeys > 0 ? claim.maxTasks : 0,
    claim.maxKeys > 0 ? claim.maxKeys : null,
    claim.startKeys,
    started.map((t) => t.id),
    started.map((t) => t.fence),
    unlockKeys,
  ]);
  const rejected = new Set(rows.filter((r) => r.rejected !== null).map((r) => Number(r.rejected)));
  for (const { run, t } of done) finish(run, t, rejected.has(t.id) ? "rejected" : "succeeded");
  return { rows: rows.filter((r) => r.rejected === null && r.id !== null) };
}

export function logOutcome(run: Run, task: Task, outcome: Outcome, error?: unknown): void {
  const log = run.tasks.length > 1 ? run.logger.child({ task: task.id }) : run.logger;
  if (outcome === "succeeded") log.info({ event: "task_succeeded" }, "holdfast: task succeeded");
  else if (outcome === "cancelled")
    log.info({ event: "task_cancelled" }, "holdfast: task cancelled");
  else if (outcome === "failed") {
    log.warn({ event: "task_failed", err: error }, "holdfast: task failed");
    // What fail() did with it, as the SQL decides from the attempts left.
    if (task.attempt >= task.maxAttempts)
      log.error({ event: "task_dead_lettered" }, "holdfast: attempts used up; dead-lettered");
    else log.info({ event: "task_retry_scheduled" }, "holdfast: retry scheduled after backoff");
  } else if (outcome === "handed_over")
    log.info(
      { event: "task_handed_over" },
      "holdfast: stopped by shutdown after a checkpoint; back to pending, attempt not counted",
    );
  else if (outcome === "throttled")
    log.warn(
      {
        event: "task_throttled",
        limit: error instanceof ThrottledError ? error.limit : undefined,
        retryAfterMs: error instanceof ThrottledError ? error.retryAfterMs : undefined,
      },
      "holdfast: limit throttled: closed for every worker; back to pending, attempt not counted",
    );
  else if (outcome === "rejected")
    log.warn(
      { event: "report_rejected" },
      "holdfast: report rejected: a newer claim of the key exists",
    );
  else
    log.warn(
      { event: "task_lost", err: error },
      "holdfast: lock lost during the run; outcome not reported",
    );
}

/** Gives back claimed tasks that did not start (a stopping worker's prefetched ones). */
export async function releaseUnstarted(
  session: LockSession,
  tasks: Task[],
  logger: Logger,
): Promise<void> {
  try {
    await session.query(sql.release, [tasks.map((t) => t.id), tasks.map((t) => t.fence)]);
    logger.info(
      { event: "prefetch_released", tasks: tasks.map((t) => t.id) },
      "holdfast: gave back prefetched tasks that did not start",
    );
  } catch (err) {
    // The session is gone, and their locks with it: the sweep requeues them.
    logger.warn(
      { event: "prefetch_release_failed", err },
      "holdfast: could not give back prefetched tasks; the sweep will requeue them",
    );
  }
}
