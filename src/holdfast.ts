import pg from "pg";
import type { Logger } from "pino";
import {
  asConnectionError,
  asKnownError,
  ConfigError,
  InvalidArgumentError,
  translateError,
} from "./errors.js";
import { defineKind, intervalLiteral, kindParams } from "./kinds.js";
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
import type {
  DeadLetter,
  DefineKindOptions,
  EnqueueOptions,
  EnqueueResult,
  Interval,
  WorkerOptions,
} from "./types.js";
import { Worker } from "./worker/worker.js";

/** Entry point: enqueue tasks, run workers, migrate the schema. */
export class Holdfast {
  private readonly opts: ResolvedOptions;
  private readonly workers = new Set<Worker>();
  private closed = false;
  private metricsInstance: HoldfastMetrics | undefined;

  constructor(options: HoldfastOptions) {
    this.opts = resolveOptions(options);
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

  /** Adds a task. Resolves once it is committed; idle workers are notified on commit. */
  async enqueue<P = unknown>(kind: string, options: EnqueueOptions<P>): Promise<EnqueueResult> {
    if (typeof kind !== "string" || kind === "")
      throw new InvalidArgumentError("holdfast: kind must be a non-empty string");
    if (typeof options !== "object" || options === null)
      throw new InvalidArgumentError("holdfast: enqueue options must be an object with a key");
    const { key, payload, runAt, priority, dedupeKey, maxAttempts, onDedupe, debounce, maxWait } =
      options;
    if (typeof key !== "string" || key === "")
      throw new InvalidArgumentError("holdfast: key must be a non-empty string");
    if (runAt !== undefined && !(runAt instanceof Date && !Number.isNaN(runAt.getTime()))) {
      throw new InvalidArgumentError("holdfast: runAt must be a valid Date");
    }
    if (priority !== undefined && !Number.isInteger(priority))
      throw new InvalidArgumentError("holdfast: priority must be an integer");
    if (maxAttempts !== undefined && !(Number.isInteger(maxAttempts) && maxAttempts >= 1)) {
      throw new InvalidArgumentError("holdfast: maxAttempts must be an integer of at least 1");
    }
    if (dedupeKey !== undefined && (typeof dedupeKey !== "string" || dedupeKey === ""))
      throw new InvalidArgumentError("holdfast: dedupeKey must be a non-empty string");
    if (onDedupe !== undefined && !["keep", "replace", "merge"].includes(onDedupe))
      throw new InvalidArgumentError("holdfast: onDedupe must be keep, replace or merge");
    if (debounce !== undefined && dedupeKey === undefined)
      throw new InvalidArgumentError("holdfast: debounce needs a dedupeKey (what is debounced)");
    if (maxWait !== undefined && debounce === undefined)
      throw new InvalidArgumentError("holdfast: maxWait needs debounce");
    const interval = (v: Interval | undefined, name: string) =>
      v === undefined ? null : intervalLiteral(v, name, "enqueue", InvalidArgumentError);
    const json = encodePayload(payload);
    const rows = await this.query<{ id: string; deduped: boolean }>(sql.enqueue, [
      kind,
      key,
      json,
      runAt ?? null,
      priority ?? 0,
      dedupeKey ?? null,
      maxAttempts ?? null,
      onDedupe ?? "keep",
      interval(debounce, "debounce"),
      interval(maxWait, "maxWait"),
    ]);
    const row = rows[0];
    if (!row) throw new InvalidArgumentError("holdfast: enqueue returned no row");
    return { id: Number(row.id), deduped: row.deduped };
  }

  /** Cancels a task: a pending one never starts; a running one has its signal aborted. */
  async cancel(id: number): Promise<boolean> {
    const rows = await this.query<{ ok: boolean }>(sql.cancel, [id]);
    return rows[0]?.ok ?? false;
  }

  /**
   * Requeues a dead-lettered (or cancelled) task as its next attempt, with `extraAttempts`
   * more attempts (default: the kind's maxAttempts); its attempts history is kept. Resolves
   * false when the task is pending, running or succeeded (nothing changes).
   */
  async retry(id: number, options: { extraAttempts?: number } = {}): Promise<boolean> {
    const { extraAttempts } = options;
    if (extraAttempts !== undefined && !(Number.isInteger(extraAttempts) && extraAttempts >= 1))
      throw new InvalidArgumentError("holdfast: extraAttempts must be an integer of at least 1");
    const rows = await this.query<{ ok: boolean }>(sql.retry, [id, extraAttempts ?? null]);
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
    const params = scheduleParams(name, options, encodePayload(options?.payload));
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
      { pool: this.opts.pool, connection: this.opts.connection, logger: this.opts.logger },
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

  private async query<R extends pg.QueryResultRow>(text: string, values: unknown[]): Promise<R[]> {
    try {
      return (await this.opts.pool.query<R>(text, values)).rows;
    } catch (err) {
      throw asKnownError(err);
    }
  }
}

/** JSON-encodes a payload, refusing what JSON cannot represent faithfully. */
function encodePayload(payload: unknown): string {
  if (payload === undefined) return "{}";
  let json: string | undefined;
  try {
    json = JSON.stringify(payload);
  } catch (err) {
    throw new InvalidArgumentError(
      `holdfast: payload is not JSON-serializable: ${(err as Error).message}`,
      { cause: err },
    );
  }
  if (json === undefined)
    throw new InvalidArgumentError("holdfast: payload is not JSON-serializable");
  if (Buffer.byteLength(json) > 1024 * 1024)
    throw new InvalidArgumentError("holdfast: payload is larger than 1 MiB");
  return json;
}
