/** What a benchmark scenario needs from a queue. One instance = one configuration on one database. */
export interface QueueSystem {
  /** e.g. "graphile-worker (tuned)". */
  readonly label: string;
  /** Installs the schema and queue in `url` (an empty database). */
  setup(url: string): Promise<void>;
  /**
   * Points this instance at `url`, which another instance set up and filled with
   * `bulkEnqueue(n, keys)`, so it can start workers there (a worker in another process: the
   * 4-process throughput). Opens no connection; only `startWorker` and `close` may follow.
   */
  attach(url: string, keys: number): void;
  /** Adds one task and resolves once its transaction committed. `key`: the exclusion key. */
  enqueue(key: string): Promise<void>;
  /** Adds `n` tasks in bulk (keys `k{i % keys}`, or distinct keys when keys is 0), then ANALYZE. */
  bulkEnqueue(n: number, keys: number): Promise<void>;
  /** Starts a worker that calls `handler(key)` for each task, at most `concurrency` at once. */
  startWorker(concurrency: number, handler: (key: string) => Promise<void>): Promise<RunningWorker>;
  /** Tasks not yet durably recorded as done (pending or running). */
  remaining(): Promise<number>;
  /** Closes every connection the system opened (workers must be stopped first). */
  close(): Promise<void>;
}

export interface RunningWorker {
  stop(): Promise<void>;
}

export type SystemFactory = () => QueueSystem;
