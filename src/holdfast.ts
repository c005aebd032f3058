import pg from "pg";
import type { Logger } from "pino";
import { encodePayload, enqueueMany, enqueueOne } from "./enqueue.js";
import {
  asConnectionError,
  asKnownError,
  ConfigError,
  InvalidArgumentError,
  translateError,
} from "./errors.js";
import { defineKind, kindParams } from "./kinds.js";
import { defineLimit, type LimitOptions, type LimitUsage, limitUsage } from "./limits.js";
import { HoldfastMetrics, type MetricsOptions } from "./metrics.js";
import { type MigrateResult, migrate } from "./migrate.js";
import {
  type HoldfastOptions,
  type ResolvedOptions,
  resolveOptions,
  resolveWorkerOptions,
} from "./options.js";
import { requireSessions } from "./pooler.js";
import { type DeadLetterRow, sql, toDeadLetter } from "./queries/tasks.js";
import {
  type Schedule,
  type ScheduleOptions,
  type ScheduleRow,
  scheduleParams,
  scheduleSql,
  toSchedule,
} from "./schedules.js";
import { Tracing } from "./tracing.js";
import type {
  DeadLetter,
  DefineKindOptions,
  EnqueueOptions,
  EnqueueResult,
  ProducerOptions,
  WorkerOptions,
} from "./types.js";
import { Worker } from "./worker/worker.js";

/** Entry point: enqueue tasks, run workers, migrate the schema. */
export class Holdfast {
  private readonly opts: ResolvedOptions;
  private readonly workers = new Set<Worker>();
  private closed = false;
  private metricsInstance: HoldfastMetrics | undefined;
  private readonly tracing: Tracing;

  constructor(options: HoldfastOptions) {
    this.opts = resolveOptions(options);
    this.tracing = new Tracing(options.tracing);
    // An idle pooled client that errors (server restart) must not crash the process.
    this.opts.pool.on("error", (err) =>
      this.opts.logger.warn({ event: "pool_error", err }, "holdfast: idle pool client error"),
    );
  }

  get logger(): Logger {
    return this.opts.logger;
  }

  /** The pool holdfast enqueues through (yours, or the one built from connectionString). */
  get pool(): pg.Pool {
    return this.opts.pool;
  }

  /** Applies pending SQL migrations once, however many processes call it at the same time. */
  async migrate(): Promise<MigrateResult> {
    // Its advisory lock needs one server session: checked before it is taken, on the session
    // URL when there is one (the pool may go through any pooler).
    await requireSessions(this.opts.connection, "migrate's connection");
    const client = new pg.Client(this.opts.connection);
    client.on("error", () => {}); // a dropped connection fails the query in progress
    try {
      await client.connect();
    } catch (err) {
      throw asConnectionError(err, "cannot connect to Postgres");
    }
    try {
      return await migrate(client, this.opts.logger);
    } catch (err) {
      throw translateError(err);
    } finally {
      await client.end().catch(() => {});
    }
  }

  /** Defines a kind (or updates the settings given); enqueue rejects kinds nobody defined. */
  async defineKind(kind: string, options: DefineKindOptions = {}): Promise<void> {
    if (typeof kind !== "string" || kind === "")
      throw new InvalidArgumentError("holdfast: kind must be a non-empty string");
    await defineKind(this.opts.pool, kind, kindParams(kind, options, InvalidArgumentError));
  }

  /**
   * Declares a limit a provider imposes, or changes it: at most `units` per sliding window of
   * `per`, shared by every kind that names it in its `limits` (docs/limits.md).
   */
  async defineLimit(name: string, options: LimitOptions): Promise<void> {
    await defineLimit(this.opts.pool, name, options);
  }

  /** Each limit's usage in its window now (reserved vs charged, waiting tasks, closed until). */
  async limits(): Promise<LimitUsage[]> {
    try {
      return await limitUsage(this.opts.pool);
    } catch (err) {
      throw asKnownError(err);
    }
  }

  /**
   * Adds a task. With `{ client }` it joins your open transaction (see ProducerOptions);
   * otherwise it resolves once committed. Idle workers are notified on commit.
   */
  async enqueue<P = unknown>(
    kind: string,
    options: EnqueueOptions<P>,
    producer: ProducerOptions = {},
  ): Promise<EnqueueResult> {
    const runner = this.runner(producer);
    const span = await this.tracing.enqueueSpan(kind, 1, options?.key);
    if (!span) return await enqueueOne(runner, kind, options);
    return await span.around(
      () => enqueueOne(runner, kind, options, span.fields),
      (r) => [r],
    );
  }

  /**
   * Adds many tasks of one kind in one statement (SQL holdfast.enqueue_many): results in input
   * order, each as `enqueue` would have returned it for the items called in turn (a key's tasks
   * keep the input order; a dedupe key repeated in the batch folds into its first task). One
   * refused item refuses the call: EnqueueItemError with its `index`, nothing written.
   */
  async enqueueMany<P = unknown>(
    kind: string,
    items: ReadonlyArray<EnqueueOptions<P>>,
    producer: ProducerOptions = {},
  ): Promise<EnqueueResult[]> {
    const runner = this.runner(producer);
    const span = Array.isArray(items)
      ? await this.tracing.enqueueSpan(kind, items.length)
      : undefined;
    if (!span) return await enqueueMany(runner, kind, items);
    return await span.around(
      () => enqueueMany(runner, kind, items, span.fields),
      (r) => r,
    );
  }

  /** Cancels a task: a pending one never starts; a running one has its signal aborted
   *  (after your COMMIT, with `{ client }`). */
  async cancel(id: number, producer: ProducerOptions = {}): Promise<boolean> {
    const rows = await this.query<{ ok: boolean }>(sql.cancel, [id], producer);
    return rows[0]?.ok ?? false;
  }

  /**
   * Requeues a dead-lettered (or cancelled) task as its next attempt, with `extraAttempts`
   * more attempts (default: the kind's maxAttempts); its attempts history is kept. Resolves
   * false when the task is pending, running or succeeded (nothing changes). `client`: in your
   * transaction (see ProducerOptions).
   */
  async retry(
    id: number,
    options: { extraAttempts?: number } & ProducerOptions = {},
  ): Promise<boolean> {
    const { extraAttempts } = options;
    if (extraAttempts !== undefined && !(Number.isInteger(extraAttempts) && extraAttempts >= 1))
      throw new InvalidArgumentError("holdfast: extraAttempts must be an integer of at least 1");
    const rows = await this.query<{ ok: boolean }>(sql.retry, [id, extraAttempts ?? null], options);
    return rows[0]?.ok ?? false;
  }

  /** Dead-lettered tasks, latest first, each with its attempts history. */
  async deadLetters(options: { kind?: string; limit?: number } = {}): Promise<DeadLetter[]> {
    const rows = await this.query<DeadLetterRow>(sql.deadLetters, [
      options.kind ?? null,
      options.limit ?? 100,
    ]);
    return rows.map(toDeadLetter);
  }

  /**
   * Declares a recurring schedule, or updates it (idempotent: every process may declare its
   * schedules at start). The sweep leader enqueues one task per tick, each tick once however
   * many workers run. Resolves true when something was created or changed.
   */
  async schedule<P = unknown>(name: string, options: ScheduleOptions<P>): Promise<boolean> {
    const params = scheduleParams(name, options, encodePayload(options?.payload) ?? "{}");
    const rows = await this.query<{ changed: boolean }>(scheduleSql.schedule, params);
    return rows[0]?.changed ?? false;
  }

  /** Removes a schedule; resolves false when there was none. Enqueued tasks stay. */
  async unschedule(name: string): Promise<boolean> {
    const rows = await this.query<{ removed: boolean }>(scheduleSql.unschedule, [name]);
    return rows[0]?.removed ?? false;
  }

  /** Every schedule, by name, with its next tick. */
  async schedules(): Promise<Schedule[]> {
    return (await this.query<ScheduleRow>(scheduleSql.schedules, [])).map(toSchedule);
  }

  /** Creates a worker; call `start()` on it. Its lock and LISTEN sessions are its own. */
  worker(options: WorkerOptions): Worker {
    if (this.closed) throw new ConfigError("holdfast: this Holdfast is closed");
    const worker = new Worker(
      {
        pool: this.opts.pool,
        connection: this.opts.connection,
        logger: this.opts.logger,
        tracing: this.tracing,
      },
      resolveWorkerOptions(options),
    );
    this.workers.add(worker);
    this.metricsInstance?.observe(worker);
    return worker;
  }

  /**
   * Prometheus metrics of every worker of this instance (made before or after this call) and
   * of the queue (read through the pool at scrape time). Options apply on the first call only.
   */
  metrics(options: MetricsOptions = {}): HoldfastMetrics {
    if (!this.metricsInstance) {
      this.metricsInstance = new HoldfastMetrics(this.opts.pool, options);
      for (const w of this.workers) this.metricsInstance.observe(w);
    }
    return this.metricsInstance;
  }

  /** Stops every worker made by this instance, then ends the pool if holdfast created it. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([...this.workers].map((w) => w.stop()));
    if (this.opts.ownsPool) await this.opts.pool.end();
  }

  /** The caller's client (inside its transaction), else the pool. */
  private runner(producer: ProducerOptions): Pick<pg.ClientBase, "query"> {
    const client = producer?.client;
    if (client === undefined) return this.opts.pool;
    if (typeof client !== "object" || client === null || typeof client.query !== "function")
      throw new InvalidArgumentError("holdfast: `client` must be a pg client (inside BEGIN)");
    return client;
  }

  private async query<R extends pg.QueryResultRow>(
    text: string,
    values: unknown[],
    producer: ProducerOptions = {},
  ): Promise<R[]> {
    const runner = this.runner(producer);
    try {
      return (await runner.query<R>(text, values)).rows;
    } catch (err) {
      throw asKnownError(err);
    }
  }
}
