import net from "node:net";
import pg from "pg";
import type { Logger } from "pino";
import { asConnectionError } from "../errors.js";
import { leaderChannel } from "../queries/tasks.js";
import { retryWithBackoff } from "./backoff.js";
import type { Reporter } from "./completer.js";
import {
  type LockSessionSettings,
  lockSessionDefaults,
  NamedStatements,
  protocolSync,
  sessionBoundsSql,
  sessionBoundsValues,
} from "./lock-session.js";
import type { ServerClock } from "./server-clock.js";

export interface ListenerHandlers {
  /** A task of this kind may be ready. */
  wake(kind: string): void;
  /** A running task was asked to stop. */
  cancel(taskId: number): void;
  /** The connection came back: notifications may have been missed, rescan. */
  reconnected(): void;
  /** A recurring schedule was declared, changed or removed. */
  schedulesChanged(): void;
  /** The sweep leader's heartbeat (it swept just now); payload: its quiet deadline (Sweeper). */
  leader(payload: string): void;
}

/** How often the LISTEN session proves it still receives notifications, and how long it may take. */
export const listenerPing = { intervalMs: 5_000, timeoutMs: 5_000 };

/**
 * The worker's LISTEN session: one pg.Client that LISTENs on `holdfast`, `holdfast_cancel`,
 * `holdfast_schedules` and the sweep leader's heartbeat channel. When the connection ends it
 * reconnects with backoff and LISTENs again, one statement at a time (a client runs one query
 * at a time). A half-open connection never ends by itself, so when nothing arrived for a ping
 * interval the session sends a bare protocol Sync and destroys its socket when the answer
 * does not come in time. Any notification proves the session alive as well. The ping is not a
 * NOTIFY to itself: that costs a transaction, and Postgres (17 measured) wakes every listening
 * backend of the database for every NOTIFY (each reads the queue in a transaction of its own),
 * so a fleet pinging while the sweep leader is quiet (no heartbeats) would cost processes²
 * wake-ups.
 *
 * The server gets the lock session's TCP bounds (keepalives, tcp_user_timeout) for this
 * session too: after a partition the worker opens a new LISTEN session, and the old backend
 * must not wait for the kernel's default timeouts (hours) to free its connection slot.
 * idle_session_timeout is off here whatever the lock session uses: a LISTEN session is idle
 * by design.
 *
 * It also keeps the worker's ServerClock: measured on every connect (start and reconnect),
 * and, once the measurement is older than clockResyncMs, refreshed by the next ping in place
 * of the Sync (the clock query proves the session alive just as well).
 */
export class Listener {
  private client: pg.Client | undefined;
  private statements: NamedStatements | undefined;
  private socket: net.Socket | undefined;
  private closing = false;
  private pingTimer: NodeJS.Timeout | undefined;
  private pinging = false;
  /** When a notification (any channel) last arrived (performance.now()). */
  private lastNotificationAt = Number.NEGATIVE_INFINITY;
  private readonly channels: string[];

  constructor(
    private readonly config: pg.ClientConfig,
    private readonly applicationName: string,
    private readonly handlers: ListenerHandlers,
    private readonly logger: Logger,
    private readonly ping = listenerPing,
    private readonly bounds: LockSessionSettings = lockSessionDefaults,
    private readonly clock?: ServerClock,
  ) {
    this.channels = ["holdfast", "holdfast_cancel", "holdfast_schedules", leaderChannel];
  }

  async start(): Promise<void> {
    try {
      await this.open();
    } catch (err) {
      throw asConnectionError(err, "cannot open the LISTEN session");
    }
    this.pingTimer = setInterval(() => void this.checkAlive(), this.ping.intervalMs);
    this.pingTimer.unref();
  }

  /**
   * Connects and LISTENs; on failure the client is closed and the error thrown. The client
   * becomes current only once it listens: the events of a connection that fails while opening
   * are ignored (the error is thrown here), so a failed attempt cannot start a second
   * reconnect loop, and so a second connection.
   */
  private async open(): Promise<void> {
    const client = new pg.Client({
      ...this.config,
      // Our own socket, so that a doubtful connection can be destroyed.
      stream:
        this.config.stream ??
        (() => {
          this.socket = new net.Socket();
          return this.socket;
        }),
      application_name: this.applicationName,
      keepAlive: true,
      keepAliveInitialDelayMillis: this.bounds.tcpKeepalivesIdleSec * 1000,
      connectionTimeoutMillis: this.config.connectionTimeoutMillis ?? 10_000,
    });
    // Both fire on a lost connection; the first one starts the reconnect.
    client.on("error", () => this.lost(client));
    client.on("end", () => this.lost(client));
    client.on("notification", (n) => this.dispatch(n.channel, n.payload ?? ""));
    try {
      await client.connect();
      await client.query(sessionBoundsSql, sessionBoundsValues(this.bounds, 0));
      await this.clock?.measure(clockQuery(client), 3);
      for (const channel of this.channels) await client.query(`listen "${channel}"`);
    } catch (err) {
      await client.end().catch(() => {});
      throw err;
    }
    this.statements = new NamedStatements(client);
    this.client = client; // from here on, its events mean a lost connection
  }

  /** Runs statements on this session while it is connected (a worker's reports: Completer). */
  reporter(): Reporter | undefined {
    const statements = this.client ? this.statements : undefined;
    if (!statements) return undefined;
    return {
      query: <R extends Record<string, unknown>>(text: string, values?: unknown[]) =>
        statements.query<R>(text, values),
    };
  }

  private dispatch(channel: string, payload: string): void {
    this.lastNotificationAt = performance.now();
    if (channel === "holdfast") this.handlers.wake(payload);
    else if (channel === leaderChannel) this.handlers.leader(payload);
    else if (channel === "holdfast_cancel") this.handlers.cancel(Number(payload));
    else if (channel === "holdfast_schedules") this.handlers.schedulesChanged();
  }

  /** The current client's connection ended or failed: reconnect until it works or we close. */
  private lost(client: pg.Client): void {
    if (client !== this.client || this.closing) return;
    this.client = undefined;
    client.end().catch(() => {});
    void this.reconnect();
  }

  private async reconnect(): Promise<void> {
    this.logger.warn(
      { event: "listen_reconnecting" },
      "holdfast: LISTEN session lost, reconnecting",
    );
    const attempts = await retryWithBackoff(() => this.open(), {
      initialMs: 100,
      maxMs: 2_000,
      keepGoing: () => !this.closing,
      onFailure: (err, attempt, retryInMs) =>
        this.logger.warn(
          { event: "listen_reconnect_failed", attempt, retryInMs, err },
          "holdfast: LISTEN session could not reconnect; retrying",
        ),
    });
    if (attempts === undefined) return;
    if (this.closing) {
      // close() ran while this attempt connected: the client it opened is ours to end.
      const client = this.client;
      this.client = undefined;
      await client?.end().catch(() => {});
      return;
    }
    this.logger.info(
      { event: "listen_reconnected", attempts },
      "holdfast: LISTEN session back, rescanning",
    );
    this.handlers.reconnected();
  }

  /** A protocol Sync round trip (or, when the clock is due a resample, the clock query); no
   *  answer within the deadline: the socket is destroyed. */
  private async checkAlive(): Promise<void> {
    const client = this.client;
    if (!client || this.pinging) return;
    const clock = this.clock?.stale ? this.clock : undefined;
    // Heard from it (unless the clock needs the round trip anyway).
    if (!clock && performance.now() - this.lastNotificationAt < this.ping.intervalMs) return;
    const socket = this.socket;
    this.pinging = true;
    const probe = clock
      ? clock.measure(clockQuery(client))
      : protocolSync(client, () => new Error("LISTEN session closed"));
    const ok = await Promise.race([
      probe.then(
        () => true,
        () => false,
      ),
      new Promise<boolean>((resolve) =>
        setTimeout(() => resolve(false), this.ping.timeoutMs).unref(),
      ),
    ]);
    this.pinging = false;
    if (!ok && client === this.client) {
      this.logger.warn(
        { event: "listen_unresponsive", timeoutMs: this.ping.timeoutMs },
        "holdfast: LISTEN session did not answer; reconnecting",
      );
      socket?.destroy();
      this.lost(client); // whether or not the destroyed socket still reports its end
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    if (this.pingTimer) clearInterval(this.pingTimer);
    const client = this.client;
    this.client = undefined;
    const timeout = new Promise<void>((r) => setTimeout(r, this.ping.timeoutMs).unref());
    await Promise.race([client?.end().catch(() => {}), timeout]);
    this.socket?.destroy();
  }
}

function clockQuery(client: pg.Client) {
  return async (text: string) => (await client.query<{ ms: number }>(text)).rows;
}
