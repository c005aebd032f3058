import type pg from "pg";
import type { LockSessionOptions, Task, Worker, WorkerEvents } from "../../src/index.js";

import { until } from "../support/wait.js";

export { until };

/**
 * Short lock-session bounds for partition tests: the client gives up within 200 + 800 ms of
 * silence; the server may free the locks after 3 s. Through a user-space proxy the proxy's
 * kernel answers the server's TCP keepalives, so idle_session_timeout (PostgreSQL 14+) is what
 * frees the lock (docs/lock-loss.md).
 */
export const fastLockSession: LockSessionOptions = {
  healthCheckIntervalMs: 200,
  healthCheckTimeoutMs: 800,
  tcpKeepalivesIdleSec: 1,
  tcpKeepalivesIntervalSec: 1,
  tcpKeepalivesCount: 2,
  tcpUserTimeoutMs: 3_000,
  idleSessionTimeoutMs: 3_000,
};

/** Resolves when `signal` aborts (with the time it did). */
export function aborted(signal: AbortSignal): Promise<number> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve(Date.now());
    else signal.addEventListener("abort", () => resolve(Date.now()), { once: true });
  });
}

/** A promise with its resolve function, to hold a handler until the test lets it go. */
export function gate<T = void>(): { promise: Promise<T>; open(value: T): void } {
  let open!: (value: T) => void;
  const promise = new Promise<T>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

/** The backend pid holding the advisory lock of `key`, if any (server view). */
export async function lockHolder(pool: pg.Pool, key: string): Promise<number | undefined> {
  const { rows } = await pool.query<{ pid: number }>(
    "select pid from holdfast.locks where key = $1 and granted",
    [key],
  );
  return rows[0]?.pid;
}

/** A handler's run as seen by the test: when it started, was aborted, and returned. */
export interface RunLog {
  worker: string;
  task: Task;
  startedAt: number;
  abortedAt?: number;
  abortReason?: unknown;
  endedAt?: number;
}

/** Resolves with the first run pushed to `runs` that matches. */
export function waitRun(
  runs: RunLog[],
  pred: (r: RunLog) => boolean,
  timeoutMs = 30_000,
): Promise<RunLog> {
  return until(async () => runs.find(pred), timeoutMs, "a matching run", 10);
}

/** Resolves with the arguments of the first `event` of `worker` that matches (from now on). */
export function waitEvent<K extends keyof WorkerEvents>(
  worker: Worker,
  event: K,
  pred: (...args: WorkerEvents[K]) => boolean = () => true,
  timeoutMs = 30_000,
): Promise<WorkerEvents[K]> {
  return new Promise((resolve, reject) => {
    const emitter = worker as unknown as NodeJS.EventEmitter;
    const timer = setTimeout(() => {
      emitter.off(event, listener);
      reject(new Error(`worker ${worker.name}: no ${event} within ${timeoutMs} ms`));
    }, timeoutMs);
    const listener = (...args: unknown[]) => {
      if (!pred(...(args as WorkerEvents[K]))) return;
      clearTimeout(timer);
      emitter.off(event, listener);
      resolve(args as WorkerEvents[K]);
    };
    emitter.on(event, listener);
  });
}
