import { createHash } from "node:crypto";
import { EventEmitter } from "node:events";
import pg from "pg";
import { asConnectionError, LockLostError, translateError } from "../errors.js";

/**
 * How a lock session detects its own loss (client side) and how long the server keeps the
 * locks of a silent client (server side). The client must always give up first: see
 * `clientDetectionMs` and `serverReleaseMs`, checked by resolveWorkerOptions.
 */
export interface LockSessionSettings {
  /** A quiet session is probed (`select 1`) after this long without an answer. */
  healthCheckIntervalMs: number;
  /** Any query on the session (probe, claim, report) unanswered this long means the session
   *  is lost: handlers are aborted and the socket is destroyed, never reused. */
  healthCheckTimeoutMs: number;
  /** Server `tcp_keepalives_idle`, in seconds. */
  tcpKeepalivesIdleSec: number;
  /** Server `tcp_keepalives_interval`, in seconds. */
  tcpKeepalivesIntervalSec: number;
  /** Server `tcp_keepalives_count`. */
  tcpKeepalivesCount: number;
  /** Server `tcp_user_timeout` in ms (0: the OS default, keepalives alone bound the release). */
  tcpUserTimeoutMs: number;
  /** Server `idle_session_timeout` in ms (PG 14+; 0: off). The health check keeps the session
   *  busy, so a positive value frees the locks of a client that went silent even where TCP
   *  cannot tell (a proxy or NAT that answers keepalives, a frozen process). */
  idleSessionTimeoutMs: number;
}

export const lockSessionDefaults: LockSessionSettings = {
  healthCheckIntervalMs: 1_000,
  healthCheckTimeoutMs: 3_000,
  tcpKeepalivesIdleSec: 10,
  tcpKeepalivesIntervalSec: 5,
  tcpKeepalivesCount: 3,
  tcpUserTimeoutMs: 20_000,
  idleSessionTimeoutMs: 0,
};

/**
 * Worst case between the last answer of the session and the client calling it lost: the
 * probe fires after the interval and waits the timeout. Every query is bounded the same way.
 */
export function clientDetectionMs(s: LockSessionSettings): number {
  return s.healthCheckIntervalMs + s.healthCheckTimeoutMs;
}

/**
 * Earliest the server can free the locks of a silent client, counted from the last bytes it
 * received: the smallest of the bounds that apply. With tcp_user_timeout set, Linux drops
 * after that many ms of silence whatever the keepalive count; other systems use the count.
 */
export function serverReleaseMs(s: LockSessionSettings): number {
  const keepalives =
    (s.tcpKeepalivesIdleSec + s.tcpKeepalivesIntervalSec * s.tcpKeepalivesCount) * 1000;
  let bound = s.tcpUserTimeoutMs > 0 ? Math.min(s.tcpUserTimeoutMs, keepalives) : keepalives;
  if (s.idleSessionTimeoutMs > 0) bound = Math.min(bound, s.idleSessionTimeoutMs);
  return bound;
}

/**
 * Sets a holdfast session's server-side bounds in one round trip: TCP keepalives and
 * tcp_user_timeout, so the server frees the backend of a client that went silent (a partition
 * leaves no FIN), and `idle_session_timeout`, which holdfast turns off unless asked (it would
 * end an idle LISTEN or lock session). Settings the server does not know (PG 13 has no
 * idle_session_timeout) are skipped. Returns the backend pid. Values: sessionBoundsValues.
 */
export const sessionBoundsSql = `select pg_backend_pid() as pid, (select count(set_config(v.name, v.setting, false))
  from (values ('idle_session_timeout', $5), ('idle_in_transaction_session_timeout', '60000'),
               ('statement_timeout', '0'), ('tcp_keepalives_idle', $1), ('tcp_keepalives_interval', $2),
               ('tcp_keepalives_count', $3), ('tcp_user_timeout', $4)) v(name, setting)
  where exists (select 1 from pg_settings p where p.name = v.name)) as applied`;

export function sessionBoundsValues(
  s: LockSessionSettings,
  idleSessionTimeoutMs: number,
): string[] {
  return [
    String(s.tcpKeepalivesIdleSec),
    String(s.tcpKeepalivesIntervalSec),
    String(s.tcpKeepalivesCount),
    String(s.tcpUserTimeoutMs),
    String(idleSessionTimeoutMs),
  ];
}

interface LockSessionEvents {
  lost: [LockLostError];
}

/** The socket under a pg.Client; pg does not expose it, and a doubtful one must be destroyed. */
interface ClientInternals {
  connection?: {
    stream?: { destroy(): void };
    sync?(): void;
    once?(event: string, listener: () => void): void;
    off?(event: string, listener: () => void): void;
  };
  _activeQuery?: unknown;
  _queryQueue?: unknown[];
  readyForQuery?: boolean;
}

/**
 * A health probe: a bare protocol Sync, which the server answers with ReadyForQuery without
 * starting a transaction (a `select 1` would be one transaction per probe, per worker process,
 * every second). Sent only while pg's client has no query in flight or queued, so the answer
 * cannot be mistaken for the end of a query; otherwise, or without the internals this relies
 * on, it falls back to `select 1`. Rejects with `closed()` when the connection ends first;
 * never settles on a silent one (the caller bounds it).
 */
export function protocolSync(client: pg.Client, closed: () => Error): Promise<void> {
  const internals = client as unknown as ClientInternals;
  const conn = internals.connection;
  const busy = internals._activeQuery != null || (internals._queryQueue?.length ?? 1) > 0;
  if (!conn?.sync || !conn.once || busy) return client.query("select 1").then(() => {});
  return new Promise((resolve, reject) => {
    const done = () => {
      conn.off?.("readyForQuery", ready);
      conn.off?.("end", ended);
    };
    const ready = () => {
      done();
      resolve();
    };
    const ended = () => {
      done();
      reject(closed());
    };
    conn.once?.("readyForQuery", ready);
    conn.once?.("end", ended);
    // A query given to the client meanwhile waits for this answer (pg sends a query only when
    // readyForQuery is true, and sets it again on the answer), so the answer cannot be taken
    // for that query's end: a session shared with other callers (the LISTEN session) is safe.
    internals.readyForQuery = false;
    conn.sync?.();
  });
}

/**
 * The worker's dedicated connection (outside any pool) that holds the advisory locks of all
 * its running tasks. Its end (error, close, or a query left unanswered past the deadline)
 * means every lock is gone, reported once through `lost`.
 *
 * Queries are dispatched one at a time by this class, so each one's deadline starts when it
 * is actually sent: a probe queued behind a slow claim is not failed for the claim's time.
 */
export class LockSession extends EventEmitter<LockSessionEvents> {
  private client: pg.Client;
  private readonly statements: NamedStatements;
  private ended = false;
  private tail: Promise<unknown> = Promise.resolve();
  private pending = 0;
  private probeTimer: NodeJS.Timeout | undefined;
  private deadlineTimer: NodeJS.Timeout | undefined;
  private inflight: symbol | undefined;
  /** When the session last answered (ms since epoch). */
  lastAnswerAt = 0;
  readonly pid: Promise<number>;
  private resolvePid!: (pid: number) => void;

  constructor(
    config: pg.ClientConfig,
    readonly applicationName: string,
    private readonly settings: LockSessionSettings = lockSessionDefaults,
  ) {
    super();
    this.pid = new Promise((resolve) => {
      this.resolvePid = resolve;
    });
    this.client = new pg.Client({
      ...config,
      application_name: applicationName,
      keepAlive: true,
      keepAliveInitialDelayMillis: settings.tcpKeepalivesIdleSec * 1000,
      connectionTimeoutMillis: config.connectionTimeoutMillis ?? 10_000,
    });
    this.statements = new NamedStatements(this.client);
    // Event-driven loss: a terminated backend or a closed socket is noticed at once.
    this.client.on("error", (err) => this.markLost(`lock session error: ${err.message}`, err));
    this.client.on("end", () => this.markLost("lock session closed"));
  }

  async connect(): Promise<void> {
    try {
      await this.client.connect();
      // Through query(): a connection that goes half-open right away hits the deadline too.
      const rows = await this.query<{ pid: number }>(
        sessionBoundsSql,
        sessionBoundsValues(this.settings, this.settings.idleSessionTimeoutMs),
      );
      this.resolvePid(rows[0]?.pid ?? 0);
    } catch (err) {
      this.ended = true;
      this.stopTimers();
      this.destroySocket();
      throw asConnectionError(err, "cannot open the lock session");
    }
  }

  get isLost(): boolean {
    return this.ended;
  }

  /** Earliest the server may free this session's locks once the client is silent: a handler's
   *  fenced write transaction is bounded by the same (assert_fence's idle_timeout). */
  get releaseBoundMs(): number {
    return serverReleaseMs(this.settings);
  }

  async query<R extends pg.QueryResultRow>(text: string, values?: unknown[]): Promise<R[]> {
    return await this.serialized(text, () => this.statements.query<R>(text, values));
  }

  /** Runs `send` after every call queued before it, under the deadline. */
  private async serialized<T>(what: string, send: () => Promise<T>): Promise<T> {
    this.pending++;
    const result = this.tail.then(() => this.dispatch(what, send));
    this.tail = result.then(
      () => {},
      () => {},
    );
    try {
      return await result;
    } finally {
      this.pending--;
      this.armProbe();
    }
  }

  private async dispatch<T>(what: string, send: () => Promise<T>): Promise<T> {
    if (this.ended) throw new LockLostError("holdfast: the lock session is closed");
    const limit = this.settings.healthCheckTimeoutMs;
    const token = Symbol(what);
    this.inflight = token;
    // Timers run before pending I/O: after a stalled event loop, let an answer that already
    // arrived be read (setImmediate runs after the poll phase) before calling the session lost.
    this.deadlineTimer = setTimeout(() => {
      setImmediate(() => {
        if (this.inflight === token)
          this.markLost(`lock session did not answer within ${limit} ms`);
      });
    }, limit);
    this.deadlineTimer.unref();
    try {
      const result = await send();
      this.answered();
      return result;
    } catch (err) {
      if (this.ended)
        throw new LockLostError("holdfast: the lock session was lost", { cause: err });
      if (err instanceof Error && "severity" in err) this.answered(); // the server answered
      throw translateError(err);
    } finally {
      clearTimeout(this.deadlineTimer);
      this.deadlineTimer = undefined;
      this.inflight = undefined;
    }
  }

  /** The health probe (see protocolSync). */
  private sync(): Promise<void> {
    return protocolSync(
      this.client,
      () => new LockLostError("holdfast: the lock session closed during a health check"),
    );
  }

  private answered(): void {
    this.lastAnswerAt = Date.now();
    this.armProbe();
  }

  /** Probes the session once it has been quiet for the interval; busy sessions probe themselves. */
  private armProbe(): void {
    if (this.probeTimer) clearTimeout(this.probeTimer);
    if (this.ended) return;
    this.probeTimer = setTimeout(() => {
      if (this.ended || this.pending > 0) return;
      this.serialized("health check", () => this.sync()).catch((err) =>
        this.markLost("lock session health check failed", err),
      );
    }, this.settings.healthCheckIntervalMs);
    this.probeTimer.unref();
  }

  /** Marks the session lost (once), destroys its socket and emits `lost`. */
  markLost(reason: string, cause?: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.stopTimers();
    // A doubtful connection is never reused: destroying it also fails any query in flight.
    this.destroySocket();
    this.emit("lost", new LockLostError(`holdfast: ${reason}`, { cause }));
  }

  /** Ends the session; the server releases every lock it held. */
  async close(): Promise<void> {
    const wasLost = this.ended;
    this.ended = true;
    this.stopTimers();
    this.removeAllListeners("lost");
    if (wasLost) return this.destroySocket();
    // A polite end waits for the server; if it does not answer in time, cut the socket.
    const timer = new Promise<void>((resolve) => {
      setTimeout(resolve, this.settings.healthCheckTimeoutMs).unref();
    });
    await Promise.race([this.client.end().catch(() => {}), timer]);
    this.destroySocket();
  }

  private stopTimers(): void {
    if (this.probeTimer) clearTimeout(this.probeTimer);
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    this.probeTimer = undefined;
    this.deadlineTimer = undefined;
  }

  private destroySocket(): void {
    (this.client as unknown as ClientInternals).connection?.stream?.destroy();
  }
}

const statementNames = new Map<string, string>();

/** SQLSTATEs the server sends as it ends the session (admin shutdown, crash, recovery), and
 *  25006 (read-only transaction): the session reached a standby (an endpoint not yet switched
 *  to the promoted primary), where no retry can succeed; a new session follows the endpoint. */
const sessionEndingCodes = new Set(["57P01", "57P02", "57P03", "25006"]);

function sqlStateOf(err: unknown): string | undefined {
  for (let e = err; e instanceof Error; e = e.cause) {
    const code = (e as { code?: unknown }).code;
    if ("severity" in e && typeof code === "string") return code;
  }
  return undefined;
}

/**
 * Whether `err` is a statement the server answered with an error on a session that is still
 * fine: it carries a SQLSTATE (the server sent an ErrorResponse, the socket works) that is not
 * a connection failure (class 08) nor the server ending the session (57P01–57P03). A lost
 * session, a missed deadline or a socket error is not one (LockLostError, no SQLSTATE). Such
 * an error aborts nothing: the locks are still held.
 */
export function isStatementError(err: unknown): boolean {
  if (err instanceof LockLostError) return false;
  const code = sqlStateOf(err);
  return code !== undefined && !code.startsWith("08") && !sessionEndingCodes.has(code);
}

/** feature_not_supported: raised for "cached plan must not change result type". */
const cachedPlanChanged = "0A000";

/**
 * The named prepared statements of one connection. A function or table replaced under one (a
 * migration) may change its result type, which Postgres refuses for a prepared statement
 * (0A000) until it is parsed again: the statement is deallocated and sent once more under a
 * new name (pg skips the Parse of a name it has parsed), on the same session.
 */
export class NamedStatements {
  private readonly renamed = new Map<string, string>();
  private generation = 0;

  constructor(private readonly client: pg.Client) {}

  async query<R extends pg.QueryResultRow>(text: string, values?: unknown[]): Promise<R[]> {
    const name = this.renamed.get(text) ?? statementName(text);
    try {
      return (await this.client.query<R>({ name, text, values })).rows;
    } catch (err) {
      if (sqlStateOf(err) !== cachedPlanChanged) throw err;
      await this.client.query(`deallocate "${name}"`).catch(() => {});
      const fresh = `${statementName(text)}_${++this.generation}`;
      this.renamed.set(text, fresh);
      return (await this.client.query<R>({ name: fresh, text, values })).rows;
    }
  }
}

/**
 * The lock session runs a handful of fixed statements, each many times: as named prepared
 * statements they are parsed and planned once per session, not on every call (the wake path).
 */
export function statementName(text: string): string {
  let name = statementNames.get(text);
  if (!name) {
    name = `holdfast_${createHash("sha1").update(text).digest("hex").slice(0, 16)}`;
    statementNames.set(text, name);
  }
  return name;
}
