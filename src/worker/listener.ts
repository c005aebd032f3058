import { randomBytes } from "node:crypto";
import net from "node:net";
import type pg from "pg";
import pgListen, { type Subscriber } from "pg-listen";
import type { Logger } from "pino";
import { asConnectionError } from "../errors.js";

export interface ListenerHandlers {
  /** A task of this kind may be ready. */
  wake(kind: string): void;
  /** A running task was asked to stop. */
  cancel(taskId: number): void;
  /** The connection came back: notifications may have been missed, rescan. */
  reconnected(): void;
}

/** How often the LISTEN session proves it still receives notifications, and how long it may take. */
export const listenerPing = { intervalMs: 5_000, timeoutMs: 5_000 };

/**
 * The worker's LISTEN session. pg-listen reconnects and re-LISTENs once the connection ends;
 * a half-open connection never ends by itself, so the session NOTIFYs a private channel
 * periodically and destroys its socket when the notification does not come back in time.
 */
export class Listener {
  private subscriber: Subscriber;
  private socket: net.Socket | undefined;
  private connected = false;
  private pingTimer: NodeJS.Timeout | undefined;
  private pingAnswered: (() => void) | undefined;
  private readonly pingChannel = `holdfast_ping_${randomBytes(6).toString("hex")}`;

  constructor(
    config: pg.ClientConfig,
    applicationName: string,
    handlers: ListenerHandlers,
    private readonly logger: Logger,
    private readonly ping = listenerPing,
  ) {
    // The socket factory lets a doubtful connection be destroyed (pg-listen does not expose it).
    const stream =
      config.stream ??
      (() => {
        this.socket = new net.Socket();
        return this.socket;
      });
    // pg-listen is CommonJS: its factory is the `default` of module.exports.
    this.subscriber = pgListen.default(
      {
        ...config,
        stream,
        application_name: applicationName,
        keepAlive: true,
        connectionTimeoutMillis: config.connectionTimeoutMillis ?? 10_000,
      },
      {
        parse: (s: string) => s,
        paranoidChecking: false, // its check has no deadline: replaced by the ping below
        retryInterval: (n: number) => Math.min(100 * 2 ** n, 2_000),
        retryTimeout: 0,
      },
    );
    this.subscriber.notifications.on(this.pingChannel, () => this.pingAnswered?.());
    this.subscriber.notifications.on("holdfast", (kind: string) => handlers.wake(kind));
    this.subscriber.notifications.on("holdfast_cancel", (id: string) =>
      handlers.cancel(Number(id)),
    );
    this.subscriber.events.on("reconnect", (attempt) => {
      this.connected = false;
      this.logger.warn(
        { event: "listen_reconnecting", attempt },
        "holdfast: LISTEN session lost, reconnecting",
      );
    });
    this.subscriber.events.on("error", (err) => {
      this.logger.error({ event: "listen_error", err }, "holdfast: LISTEN session error");
      // A failed re-LISTEN leaves a connection that would not wake us: start over.
      this.socket?.destroy();
    });
    let first = true;
    this.subscriber.events.on("connected", () => {
      this.connected = true;
      if (first) {
        first = false;
        return;
      }
      this.logger.info(
        { event: "listen_reconnected" },
        "holdfast: LISTEN session back, rescanning",
      );
      handlers.reconnected();
    });
  }

  async start(): Promise<void> {
    try {
      await this.subscriber.connect();
      await this.subscriber.listenTo("holdfast");
      await this.subscriber.listenTo("holdfast_cancel");
      await this.subscriber.listenTo(this.pingChannel);
      this.pingTimer = setInterval(() => void this.checkAlive(), this.ping.intervalMs);
      this.pingTimer.unref();
    } catch (err) {
      await this.subscriber.close().catch(() => {});
      throw asConnectionError(err, "cannot open the LISTEN session");
    }
  }

  /** NOTIFYs its own private channel; no echo within the deadline: the socket is destroyed. */
  private async checkAlive(): Promise<void> {
    if (!this.connected || this.pingAnswered) return;
    const socket = this.socket;
    const answered = new Promise<boolean>((resolve) => {
      this.pingAnswered = () => resolve(true);
      setTimeout(() => resolve(false), this.ping.timeoutMs).unref();
    });
    this.subscriber.notify(this.pingChannel).catch(() => {});
    const ok = await answered;
    this.pingAnswered = undefined;
    if (!ok && this.connected && socket === this.socket) {
      this.logger.warn(
        { event: "listen_unresponsive", timeoutMs: this.ping.timeoutMs },
        "holdfast: LISTEN session did not answer; reconnecting",
      );
      socket?.destroy();
    }
  }

  async close(): Promise<void> {
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.connected = false;
    const timeout = new Promise<void>((r) => setTimeout(r, this.ping.timeoutMs).unref());
    await Promise.race([this.subscriber.close().catch(() => {}), timeout]);
    this.socket?.destroy();
  }
}
