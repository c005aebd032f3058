import { EventEmitter } from "node:events";
import pg from "pg";
import { asConnectionError, LockLostError, translateError } from "../errors.js";

/** Server settings of a lock session, applied where the server knows them (PG 13-18). */
export interface SessionSettings {
  /** Seconds of silence before the server probes a client (tcp_keepalives_idle). */
  keepalivesIdle: number;
  keepalivesInterval: number;
  keepalivesCount: number;
  /** Milliseconds unacknowledged data may stay in flight before the server drops the client. */
  tcpUserTimeoutMs: number;
}

export const defaultSessionSettings: SessionSettings = {
  keepalivesIdle: 10,
  keepalivesInterval: 5,
  keepalivesCount: 3,
  tcpUserTimeoutMs: 20_000,
};

interface LockSessionEvents {
  lost: [LockLostError];
}

/**
 * The worker's dedicated connection (outside any pool) that holds the advisory locks of all
 * its running tasks. Its end — error, close, or a failed health check — means every lock is
 * gone, reported once through `lost`.
 */
export class LockSession extends EventEmitter<LockSessionEvents> {
  private client: pg.Client;
  private ended = false;
  readonly pid: Promise<number>;
  private resolvePid!: (pid: number) => void;

  constructor(
    config: pg.ClientConfig,
    readonly applicationName: string,
    private readonly settings: SessionSettings = defaultSessionSettings,
  ) {
    super();
    this.pid = new Promise((resolve) => {
      this.resolvePid = resolve;
    });
    this.client = new pg.Client({
      ...config,
      application_name: applicationName,
      keepAlive: true,
      keepAliveInitialDelayMillis: settings.keepalivesIdle * 1000,
      connectionTimeoutMillis: config.connectionTimeoutMillis ?? 10_000,
    });
    this.client.on("error", (err) => this.markLost(`lock session error: ${err.message}`, err));
    this.client.on("end", () => this.markLost("lock session closed"));
  }

  async connect(): Promise<void> {
    try {
      await this.client.connect();
      const s = this.settings;
      const { rows } = await this.client.query<{ pid: number }>(
        `select pg_backend_pid() as pid, (select count(set_config(v.name, v.setting, false))
           from (values ('idle_session_timeout', '0'), ('idle_in_transaction_session_timeout', '60000'),
                        ('statement_timeout', '0'), ('tcp_keepalives_idle', $1), ('tcp_keepalives_interval', $2),
                        ('tcp_keepalives_count', $3), ('tcp_user_timeout', $4)) v(name, setting)
           where exists (select 1 from pg_settings p where p.name = v.name)) as applied`,
        [
          String(s.keepalivesIdle),
          String(s.keepalivesInterval),
          String(s.keepalivesCount),
          String(s.tcpUserTimeoutMs),
        ],
      );
      this.resolvePid(rows[0]?.pid ?? 0);
    } catch (err) {
      this.ended = true;
      await this.client.end().catch(() => {});
      throw asConnectionError(err, "cannot open the lock session");
    }
  }

  get isLost(): boolean {
    return this.ended;
  }

  async query<R extends pg.QueryResultRow>(text: string, values?: unknown[]): Promise<R[]> {
    if (this.ended) throw new LockLostError("holdfast: the lock session is closed");
    try {
      return (await this.client.query<R>(text, values)).rows;
    } catch (err) {
      throw translateError(err);
    }
  }

  /** Marks the session lost (once) and emits `lost`. */
  markLost(reason: string, cause?: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.emit("lost", new LockLostError(`holdfast: ${reason}`, { cause }));
  }

  /** Ends the session; the server releases every lock it held. */
  async close(): Promise<void> {
    this.ended = true;
    this.removeAllListeners("lost");
    await this.client.end().catch(() => {});
  }
}
