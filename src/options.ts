import os from "node:os";
import pg from "pg";
import { type Logger, pino } from "pino";
import { ConfigError } from "./errors.js";
import { type KindParams, kindParams } from "./kinds.js";
import type { TracingOptions } from "./tracing.js";
import type { BatchKindOptions, KindOptions, LockSessionOptions, WorkerOptions } from "./types.js";
import {
  clientDetectionMs,
  type LockSessionSettings,
  lockSessionDefaults,
  serverReleaseMs,
} from "./worker/lock-session.js";

export interface HoldfastOptions {
  /** `postgres://user:pass@host:port/db`. Either this or `pool`. */
  connectionString?: string;
  /** The application's pool: holdfast enqueues through it, and copies its settings for the
   *  worker's two dedicated sessions (lock and LISTEN), which never come from the pool. */
  pool?: pg.Pool;
  /**
   * A direct (or session-pooled) URL for the sessions that must keep one server session: the
   * worker's lock and LISTEN sessions and `migrate`. Set it when `pool`/`connectionString` goes
   * through a transaction or statement pooler (a managed provider's pooled URL): producers,
   * inspect and the dashboard keep using that. Default: the settings of `pool` or
   * `connectionString`.
   */
  sessionConnectionString?: string;
  /** pino logger; default: pino at `HOLDFAST_LOG_LEVEL` (default `info`) named `holdfast`. */
  logger?: Logger;
  /**
   * OpenTelemetry spans for enqueues and runs (docs/tracing.md), recorded when
   * @opentelemetry/api is installed and a tracer provider is registered; `false`: none.
   * Default: `{}` (the global provider, runs linked to their enqueue).
   */
  tracing?: TracingOptions | false;
}

export interface ResolvedOptions {
  pool: pg.Pool;
  ownsPool: boolean;
  connection: pg.ClientConfig;
  logger: Logger;
}

/** Validates options once; throws ConfigError with a message that says what to fix. */
export function resolveOptions(opts: HoldfastOptions): ResolvedOptions {
  if (typeof opts !== "object" || opts === null) {
    throw new ConfigError("holdfast: options must be an object ({ connectionString } or { pool })");
  }
  const { connectionString, pool, sessionConnectionString } = opts;
  if ((connectionString === undefined) === (pool === undefined)) {
    throw new ConfigError("holdfast: pass exactly one of `connectionString` or `pool`");
  }
  if (sessionConnectionString !== undefined)
    validateConnectionString(sessionConnectionString, "sessionConnectionString");
  const logger =
    opts.logger ?? pino({ name: "holdfast", level: process.env.HOLDFAST_LOG_LEVEL ?? "info" });
  // The session URL names the server; other settings of the pool (ssl, timeouts) carry over.
  const direct = (fallback: pg.ClientConfig): pg.ClientConfig => {
    if (sessionConnectionString === undefined) return fallback;
    const {
      connectionString: _url,
      host: _host,
      port: _port,
      database: _db,
      user: _user,
      password: _password,
      ...rest
    } = fallback;
    return { ...rest, connectionString: sessionConnectionString };
  };
  if (connectionString !== undefined) {
    validateConnectionString(connectionString, "connectionString");
    // No named prepared statement and no session state goes through this pool (any pooler).
    return {
      pool: new pg.Pool({ connectionString, max: 4 }),
      ownsPool: true,
      connection: direct({ connectionString }),
      logger,
    };
  }
  if (!(pool instanceof pg.Pool)) {
    throw new ConfigError("holdfast: `pool` must be a pg.Pool");
  }
  // pg.Pool keeps the config it was built with; the dedicated sessions reuse it.
  const {
    max: _max,
    idleTimeoutMillis: _idle,
    ...connection
  } = (pool as unknown as { options: pg.PoolConfig }).options;
  return { pool, ownsPool: false, connection: direct(connection), logger };
}

function validateConnectionString(value: unknown, name: string): void {
  if (typeof value !== "string" || value.trim() === "") {
    throw new ConfigError(`holdfast: \`${name}\` must be a non-empty string`);
  }
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigError(
      `holdfast: \`${name}\` is not a URL (expected postgres://user:password@host:port/database)`,
    );
  }
  if (url.protocol !== "postgres:" && url.protocol !== "postgresql:") {
    throw new ConfigError(
      `holdfast: \`${name}\` must start with postgres:// or postgresql://, got ${url.protocol}//`,
    );
  }
}

/** Defaults of `hf.worker()` options, documented on WorkerOptions. */
export const workerDefaults = {
  concurrency: 1,
  prefetch: 0,
  sweepIntervalMs: 250,
  rescanIntervalMs: 30_000,
  pruneBatchSize: 1000,
  pruneIntervalMs: 60_000,
  shutdownTimeoutMs: 30_000,
  reconnectMaxDelayMs: 5_000,
} as const;

export interface ResolvedWorkerOptions {
  name: string;
  concurrency: number;
  prefetch: number;
  kinds: Map<string, ResolvedKind>;
  sweepIntervalMs: number;
  rescanIntervalMs: number;
  pruneBatchSize: number;
  pruneIntervalMs: number;
  shutdownTimeoutMs: number;
  reconnectMaxDelayMs: number;
  lockSession: LockSessionSettings;
}

/** A worker's kind: a single-task handler, or a batch handler with its batch size. */
export type ResolvedKind = { kind: string; params: KindParams } & (
  | { batchMax: 1; handler: KindOptions["handler"]; batch: false }
  | { batchMax: number; handler: BatchKindOptions["handleBatch"]; batch: true }
);

/** A kind's name: the check of holdfast.kinds.kind (migrations/0001_baseline.sql), which
 *  define_kind repeats for its message; test/kind-settings.test.ts holds the three equal.
 *  Checked here too so that hf.worker() refuses a bad name before anything connects. */
export const kindNamePattern = /^[A-Za-z0-9_.:-]{1,100}$/;

export function resolveWorkerOptions(opts: WorkerOptions): ResolvedWorkerOptions {
  if (typeof opts !== "object" || opts === null)
    throw new ConfigError("holdfast: worker options must be an object");
  const positiveInt = (name: string, value: number | undefined, fallback: number): number => {
    const v = value ?? fallback;
    if (!Number.isInteger(v) || v < 1)
      throw new ConfigError(`holdfast: \`${name}\` must be a positive integer, got ${String(v)}`);
    return v;
  };
  const handlers = opts.handlers;
  if (typeof handlers !== "object" || handlers === null || Object.keys(handlers).length === 0) {
    throw new ConfigError("holdfast: `handlers` must map at least one kind to a handler function");
  }
  const kinds = new Map<string, ResolvedKind>();
  for (const [kind, entry] of Object.entries(handlers)) {
    if (!kindNamePattern.test(kind)) {
      throw new ConfigError(
        `holdfast: invalid kind name ${JSON.stringify(kind)} (1-100 of letters, digits, _ . : -)`,
      );
    }
    const def: KindOptions | BatchKindOptions =
      typeof entry === "function" ? { handler: entry } : entry;
    if (def !== null && typeof def === "object" && "handleBatch" in def) {
      if (typeof def.handleBatch !== "function" || def.batch === undefined) {
        throw new ConfigError(
          `holdfast: batch kind ${JSON.stringify(kind)} needs batch: { max } and a handleBatch function`,
        );
      }
      const params = kindParams(kind, def, ConfigError);
      const batchMax = params.batchMax ?? 1;
      kinds.set(kind, { kind, params, batchMax, handler: def.handleBatch, batch: true });
    } else {
      if (typeof def?.handler !== "function") {
        throw new ConfigError(
          `holdfast: the handler of kind ${JSON.stringify(kind)} must be a function`,
        );
      }
      // A single-task handler declares no batch size: the stored one stays (hf.defineKind owns
      // it; a batch claimed for this worker runs task by task under its lock, see runs.ts).
      const params = kindParams(kind, { ...def, batch: undefined }, ConfigError);
      kinds.set(kind, {
        kind,
        params,
        batchMax: 1,
        handler: def.handler,
        batch: false,
      });
    }
  }
  const name =
    opts.name ?? `${os.hostname()}:${process.pid}:${Math.random().toString(36).slice(2, 8)}`;
  if (typeof name !== "string" || name === "" || name.length > 200) {
    throw new ConfigError("holdfast: `name` must be a string of 1 to 200 characters");
  }
  return {
    name,
    kinds,
    concurrency: positiveInt("concurrency", opts.concurrency, workerDefaults.concurrency),
    prefetch: prefetchCount(opts.prefetch),
    sweepIntervalMs: positiveInt(
      "sweepIntervalMs",
      opts.sweepIntervalMs,
      workerDefaults.sweepIntervalMs,
    ),
    rescanIntervalMs: positiveInt(
      "rescanIntervalMs",
      opts.rescanIntervalMs,
      workerDefaults.rescanIntervalMs,
    ),
    pruneBatchSize: positiveInt(
      "pruneBatchSize",
      opts.pruneBatchSize,
      workerDefaults.pruneBatchSize,
    ),
    pruneIntervalMs: positiveInt(
      "pruneIntervalMs",
      opts.pruneIntervalMs,
      workerDefaults.pruneIntervalMs,
    ),
    shutdownTimeoutMs: positiveInt(
      "shutdownTimeoutMs",
      opts.shutdownTimeoutMs,
      workerDefaults.shutdownTimeoutMs,
    ),
    reconnectMaxDelayMs: positiveInt(
      "reconnectMaxDelayMs",
      opts.reconnectMaxDelayMs,
      workerDefaults.reconnectMaxDelayMs,
    ),
    lockSession: resolveLockSession(opts.lockSession),
  };
}

function prefetchCount(value: number | undefined): number {
  const v = value ?? workerDefaults.prefetch;
  if (!Number.isInteger(v) || v < 0 || v > 1000)
    throw new ConfigError(
      `holdfast: \`prefetch\` must be an integer from 0 to 1000, got ${String(v)}`,
    );
  return v;
}

/** The client must call its session lost well before the server can free the locks. */
function resolveLockSession(opts: LockSessionOptions | undefined): LockSessionSettings {
  if (opts !== undefined && (typeof opts !== "object" || opts === null))
    throw new ConfigError("holdfast: `lockSession` must be an object");
  const s: LockSessionSettings = { ...lockSessionDefaults };
  for (const name of Object.keys(lockSessionDefaults) as (keyof LockSessionSettings)[]) {
    const v = opts?.[name] ?? lockSessionDefaults[name];
    const zeroOk = name === "tcpUserTimeoutMs" || name === "idleSessionTimeoutMs";
    if (!Number.isInteger(v) || v < (zeroOk ? 0 : 1) || v > 2_147_483_647)
      throw new ConfigError(
        `holdfast: \`lockSession.${name}\` must be an integer ${zeroOk ? ">= 0" : ">= 1"}, got ${String(v)}`,
      );
    s[name] = v;
  }
  const detect = clientDetectionMs(s);
  const release = serverReleaseMs(s);
  if (detect * 2 > release || release - detect < 1_000) {
    throw new ConfigError(
      `holdfast: lock-loss detection (healthCheckIntervalMs + healthCheckTimeoutMs = ${detect} ms) ` +
        `must be at most half the server release bound (${release} ms, from tcp_user_timeout, ` +
        "keepalives and idle_session_timeout) and 1 s below it, so a worker aborts its handlers " +
        "before the server can free their locks",
    );
  }
  return s;
}
