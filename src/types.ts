import type { Logger } from "pino";

/** A task as its handler sees it. */
export interface Task<P = unknown> {
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
}

export type Handler<P = unknown> = (task: Task<P>, ctx: HandlerContext) => Promise<void> | void;

export interface KindOptions {
  // biome-ignore lint/suspicious/noExplicitAny: handlers declare their own payload type
  handler: Handler<any>;
  /** Attempts before a failing task is dead-lettered; stored with the kind (default 5). */
  maxAttempts?: number;
}

export interface WorkerOptions {
  /** Handlers per kind: a function, or `{ handler, maxAttempts }`. The worker defines these kinds. */
  // biome-ignore lint/suspicious/noExplicitAny: handlers declare their own payload type
  handlers: Record<string, Handler<any> | KindOptions>;
  /** Handlers running at once (default 1). Connections do not grow with it. */
  concurrency?: number;
  /** Recorded as the holder of its tasks (default host:pid:random). */
  name?: string;
  /** How often the elected worker looks for orphaned tasks (default 250 ms). */
  sweepIntervalMs?: number;
  /** Safety rescan in case a notification was missed (default 30 s). */
  rescanIntervalMs?: number;
  /** stop(): how long to wait for running handlers before aborting their signal (default 30 s). */
  shutdownTimeoutMs?: number;
  /** Upper bound of the reconnect backoff of the lock session (default 5 s). */
  reconnectMaxDelayMs?: number;
  /** Lock-loss detection and release timing (README: "Lock loss: detection and release"). */
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
  /** At most one pending task per dedupe key: enqueuing again returns the pending one. */
  dedupeKey?: string;
  /** Overrides the kind's max attempts. */
  maxAttempts?: number;
}

export interface EnqueueResult {
  id: number;
  /** true when a pending task with the same dedupeKey already existed (its id is returned). */
  deduped: boolean;
}
