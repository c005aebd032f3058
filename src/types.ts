import type pg from "pg";
import type { Logger } from "pino";

/** A task as its handler sees it. `C`: the type of its checkpoint. */
export interface Task<P = unknown, C = unknown> {
  id: number;
  kind: string;
  key: string;
  payload: P;
  /** 1 for the first run; a crash or a failure makes the next run attempt + 1. */
  attempt: number;
  maxAttempts: number;
  /** Increases with every claim of the key; guards the handler's writes (`ctx.assertFence`). */
  fence: number;
  priority: number;
  runAt: Date;
  createdAt: Date;
  /** The last checkpoint written by a run of this task (`ctx.checkpoint`): null on a first
   *  attempt; a retry, a crash's next attempt or a shutdown hand-over resumes from it. */
  checkpoint: C | null;
  /** When that checkpoint was written (null: none). */
  checkpointAt: Date | null;
}

/** Anything with a pg-style `query` (a pg.Client, a pooled client) on which to check the fence. */
export interface Queryable {
  query(text: string, values?: unknown[]): Promise<unknown>;
}

export interface HandlerContext {
  /** Aborted when the lock is lost (LockLostError), the task is cancelled (TaskCancelledError)
   *  or the worker's shutdown timeout elapses (ShutdownError): stop work and return. */
  signal: AbortSignal;
  /** Child logger carrying task, kind, key, attempt and fence. */
  logger: Logger;
  /** Call inside your own transaction before committing writes: throws StaleFenceError once
   *  a newer claim of the key exists, so a run that lost its lock cannot write. */
  assertFence(client: Queryable): Promise<void>;
  /**
   * Stores `state` (any JSON value up to 1 MiB) on the task, fenced: the task's next attempt
   * receives it as `task.checkpoint`. An object's `progress` (0 to 1) and `note` (a string)
   * are shown by inspect, the dashboard and the metrics. Without `client` it is written
   * through the app's pool; with `{ client }` inside your transaction, so your writes and the
   * checkpoint commit together. Refused once the run no longer holds the task (a newer claim,
   * the run ended, its lock session is gone): throws StaleFenceError and aborts `signal`.
   * A batch run writes it on each of its tasks, or on `{ task }` only.
   */
  checkpoint(state: unknown, options?: CheckpointOptions): Promise<void>;
  /**
   * Charges `units` (a whole number, 0 or more) this run spent on `limit`, one of its kind's
   * limits: a run's charges add up and replace its reservation in the limit's window (less
   * than reserved frees room for other runs at once). Written through the app's pool. Refused
   * once the run no longer holds its task: throws StaleFenceError and aborts `signal`.
   */
  charge(limit: string, units: number): Promise<void>;
}

export interface CheckpointOptions {
  /** Write the checkpoint in this client's open transaction (it commits with your writes). */
  client?: Queryable;
  /** A batch run: the task (or its id) whose checkpoint this is (default: every task of it). */
  task?: Task | number;
}

export type Handler<P = unknown, C = unknown> = (
  task: Task<P, C>,
  ctx: HandlerContext,
) => Promise<void> | void;

/** A batch kind's handler: up to `batch.max` tasks of one key, in the key's order, claimed
 *  together under one lock and one fence. They succeed together when it resolves and fail
 *  together (each one's attempt is recorded and retried) when it throws. */
export type BatchHandler<P = unknown, C = unknown> = (
  tasks: Task<P, C>[],
  ctx: HandlerContext,
) => Promise<void> | void;

/** A minimum interval: milliseconds, or a Postgres interval such as `"8 hours"`. */
export type Interval = number | string;

/** Settings stored with a kind (`hf.defineKind`, or a worker's handler entry). */
export interface KindSettings {
  /** Attempts before a failing task is dead-lettered (default 5). */
  maxAttempts?: number;
  /** A task of this kind does not start on a key before the last successful run of the kind
   *  on that key ended plus this interval (enforced at claim time, across all producers). */
  minInterval?: Interval;
  /**
   * Whether a failed task waiting out its retry backoff keeps its place in its key's order
   * (default true: the key's later tasks wait until it succeeds, is dead-lettered or is
   * cancelled). false lets later tasks of the key pass it, for kinds whose tasks on one key
   * are independent. A lost attempt (crash, lock loss) keeps its place either way.
   */
  strictOrder?: boolean;
  /**
   * At most this many runs of the kind at once across every worker process (a batch is one
   * run); `null` removes the cap, undefined keeps the stored setting (default: no cap). A
   * run holds one of the kind's slots, a session advisory lock, freed by Postgres when its
   * holder dies: no lease, no timeout.
   */
  maxRunning?: number | null;
  /** A success keeps the task's checkpoint, e.g. to read a run's final progress afterwards
   *  (default false: a success clears it; a failure, a dead letter or a cancel keeps it). */
  keepCheckpoint?: boolean;
  /** How long finished tasks of the kind are kept (see Retention); omitted: kept as stored. */
  retention?: Retention;
  /**
   * The limits (`hf.defineLimit`) a run of the kind draws on, and the units it reserves on
   * each: a run starts only when every one has room for its reservation; `ctx.charge` replaces
   * the reservation with what the run spent. Replaces the kind's limits (`{}`: none);
   * omitted: kept as stored. See docs/limits.md.
   */
  limits?: Record<string, number>;
}

/**
 * How long a task is kept after it ended, per end state, before the sweep leader prunes it with
 * its attempts: ms or interval text; `null` keeps it forever; a state left out keeps its stored
 * setting. Defaults: succeeded 1 day, cancelled 7 days, failed (dead letters) 30 days.
 */
export interface Retention {
  succeeded?: Interval | null;
  cancelled?: Interval | null;
  failed?: Interval | null;
}

export interface DefineKindOptions extends KindSettings {
  /** Tasks handed to a batch handler at once (1 to 1000; default 1: not a batch kind). */
  batch?: { max: number };
}

export interface KindOptions extends KindSettings {
  // biome-ignore lint/suspicious/noExplicitAny: handlers declare their own payload type
  handler: Handler<any, any>;
}

/** A batch kind: `handleBatch` (not `handler`) receives the tasks, so each entry's handler
 *  parameters are typed from the entry's shape. */
export interface BatchKindOptions extends KindSettings {
  /** Up to `max` pending tasks of one key, of this kind and next in the key's order. */
  batch: { max: number };
  // biome-ignore lint/suspicious/noExplicitAny: handlers declare their own payload type
  handleBatch: BatchHandler<any, any>;
}

export interface WorkerOptions {
  /** Handlers per kind: a function, `{ handler, maxAttempts, minInterval }`, or a batch kind
   *  `{ batch: { max }, handleBatch: (tasks, ctx) => … }`. The worker defines these kinds. */
  // biome-ignore lint/suspicious/noExplicitAny: handlers declare their own payload type
  handlers: Record<string, Handler<any, any> | KindOptions | BatchKindOptions>;
  /** Handlers running at once (default 1). Connections do not grow with it. */
  concurrency?: number;
  /**
   * Tasks claimed ahead of free slots (default 0), started as slots free up without a round
   * trip: more throughput for short tasks. Each one holds its key's lock while it waits, so
   * keep 0 for long tasks. stop() gives unstarted ones back, and after a lock loss the sweep
   * does (an attempt not counted: they never started).
   */
  prefetch?: number;
  /** Recorded as the holder of its tasks (default host:pid:random). */
  name?: string;
  /**
   * How often the elected worker looks for orphaned tasks (default 250 ms). The other workers
   * run nothing on this timer: they try to take over the sweep when the leader's heartbeat
   * (a NOTIFY with each sweep) is twice this late. While no task runs and none is due the
   * leader skips these sweeps until the next enqueue or the earliest delayed task
   * (docs/concepts.md, Leader).
   */
  sweepIntervalMs?: number;
  /** Safety rescan in case a notification was missed (default 30 s). */
  rescanIntervalMs?: number;
  /** Finished tasks the sweep leader prunes per batch, one short transaction each (default
   *  1000; docs/retention.md). */
  pruneBatchSize?: number;
  /** The sweep leader prunes at most this often once it has caught up (default 60 s): an idle
   *  cluster is not woken for pruning more often. */
  pruneIntervalMs?: number;
  /** stop(): how long to wait for running handlers before aborting their signal (default 30 s). */
  shutdownTimeoutMs?: number;
  /** Upper bound of the reconnect backoff of the lock session (default 5 s). */
  reconnectMaxDelayMs?: number;
  /** Lock-loss detection and release timing (docs/lock-loss.md). */
  lockSession?: LockSessionOptions;
}

/**
 * The client gives up a silent lock session after at most healthCheckIntervalMs +
 * healthCheckTimeoutMs; the server frees its locks no sooner than the smallest of the TCP and
 * idle bounds. The first must be at most half the second (checked: ConfigError otherwise).
 */
export interface LockSessionOptions {
  /** Probe a quiet lock session after this long (default 1000 ms). */
  healthCheckIntervalMs?: number;
  /** Deadline of every lock-session query, probes included (default 3000 ms). */
  healthCheckTimeoutMs?: number;
  /** Server tcp_keepalives_idle in seconds (default 10). */
  tcpKeepalivesIdleSec?: number;
  /** Server tcp_keepalives_interval in seconds (default 5). */
  tcpKeepalivesIntervalSec?: number;
  /** Server tcp_keepalives_count (default 3). */
  tcpKeepalivesCount?: number;
  /** Server tcp_user_timeout in ms (default 20000; 0 = the OS default). */
  tcpUserTimeoutMs?: number;
  /** Server idle_session_timeout in ms, PG 14+ (default 0 = off). Frees a silent client's locks
   *  where TCP cannot tell, e.g. behind a proxy that answers keepalives. */
  idleSessionTimeoutMs?: number;
}

export interface EnqueueOptions<P = unknown> {
  /** The exclusion key: at most one task of a key runs at a time. */
  key: string;
  payload?: P;
  /** Not before this time (default now). */
  runAt?: Date;
  /** Lower runs first (default 0). */
  priority?: number;
  /** At most one pending task per dedupe key: enqueuing again returns the pending one (a
   *  dedupe key belongs to one key). One may run while another waits. */
  dedupeKey?: string;
  /** What a deduped enqueue does to the pending task's payload: keep it (default), replace
   *  it with this payload, or merge (jsonb `||`: this payload's top-level fields win). */
  onDedupe?: "keep" | "replace" | "merge";
  /** Overrides the kind's max attempts. */
  maxAttempts?: number;
  /**
   * Debounce (needs `dedupeKey`): the pending task of the dedupe key starts no earlier than
   * this long after the latest enqueue; each deduped enqueue pushes its start again. ms, or a
   * Postgres interval such as "10 minutes".
   */
  debounce?: Interval;
  /** With `debounce`: pushes never move the start past the task's first enqueue + maxWait. */
  maxWait?: Interval;
}

/**
 * Where a producer call (enqueue, enqueueMany, cancel, retry) runs. Default: a connection of
 * holdfast's pool, committed before the call resolves.
 */
export interface ProducerOptions {
  /**
   * A `pg` client inside your open transaction (after BEGIN): the call joins it, so the task
   * commits with your writes or not at all. Workers neither see it nor are woken before your
   * COMMIT (NOTIFY is transactional); after a ROLLBACK nothing is left. A refused call (a
   * typed error from SQL) aborts your transaction, as any failed statement does; a call
   * refused before SQL (a runAt that is not a Date, a payload JSON cannot represent) does not.
   */
  client?: pg.ClientBase;
}

export interface EnqueueResult {
  id: number;
  /** true when a pending task with the same dedupeKey already existed (its id is returned). */
  deduped: boolean;
}

/** One attempt of a task: who ran it and how it ended (null while it runs). */
export interface Attempt {
  attempt: number;
  worker: string | null;
  startedAt: Date;
  finishedAt: Date | null;
  outcome: "succeeded" | "failed" | "lost" | "cancelled" | null;
  error: { message?: string; stack?: string } | null;
}

/** A task that used all its attempts (state `failed`); requeue it with `hf.retry(id)`. */
export interface DeadLetter<P = unknown> {
  id: number;
  kind: string;
  key: string;
  payload: P;
  attempt: number;
  maxAttempts: number;
  lastError: { message?: string; stack?: string } | null;
  createdAt: Date;
  finishedAt: Date;
  attempts: Attempt[];
}
