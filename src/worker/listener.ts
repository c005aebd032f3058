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

/** The worker's LISTEN session (pg-listen reconnects and re-LISTENs on its own). */
export class Listener {
  private subscriber: Subscriber;

  constructor(
    config: pg.ClientConfig,
    applicationName: string,
    handlers: ListenerHandlers,
    private readonly logger: Logger,
  ) {
    // pg-listen is CommonJS: its factory is the `default` of module.exports.
    this.subscriber = pgListen.default(
      { ...config, application_name: applicationName, keepAlive: true },
      {
        parse: (s: string) => s,
        paranoidChecking: 10_000,
        retryInterval: (n: number) => Math.min(100 * 2 ** n, 2_000),
        retryTimeout: 0,
      },
    );
    this.subscriber.notifications.on("holdfast", (kind: string) => handlers.wake(kind));
    this.subscriber.notifications.on("holdfast_cancel", (id: string) =>
      handlers.cancel(Number(id)),
    );
    this.subscriber.events.on("reconnect", (attempt) => {
      this.logger.warn(
        { event: "listen_reconnecting", attempt },
        "holdfast: LISTEN session lost, reconnecting",
      );
    });
    this.subscriber.events.on("error", (err) => {
      this.logger.error({ event: "listen_error", err }, "holdfast: LISTEN session error");
    });
    let first = true;
    this.subscriber.events.on("connected", () => {
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
    } catch (err) {
      await this.subscriber.close().catch(() => {});
      throw asConnectionError(err, "cannot open the LISTEN session");
    }
  }

  async close(): Promise<void> {
    await this.subscriber.close().catch(() => {});
  }
}
