import type pg from "pg";
import type { Logger } from "pino";
import type { Task } from "../types.js";

/**
 * Logs a worker's waits for room on a limit: `limit_wait` when a claim came back empty while a
 * limit of its kinds had no room, `limit_admitted` (with waitedMs) when a run of such a kind
 * next starts. Read through the app's pool, off the lock session, and only by workers whose
 * kinds draw on a limit (learned at start): an unlimited worker's idle path costs nothing more.
 */
export class LimitWaits {
  private limited = new Set<string>();
  private readonly waiting = new Map<string, { since: number; kinds: string[] }>();
  private reading = false;
  /** When the last read started: at most one a second, however often claims come back empty
   *  (one asked for sooner is deferred, not dropped: it may be the last empty claim for long). */
  private readAt = 0;
  private deferred: NodeJS.Timeout | undefined;

  constructor(
    private readonly pool: pg.Pool,
    private readonly kinds: string[],
    private readonly logger: Logger,
  ) {}

  /** Learns which of the worker's kinds draw on a limit. */
  async start(): Promise<void> {
    const rows = await this.usage();
    this.limited = new Set(rows.flatMap((r) => r.kinds));
  }

  /** A claim got nothing: note the limits of our kinds without room (once per wait). */
  claimedNothing(): void {
    if (this.limited.size === 0 || this.deferred) return;
    const wait = this.readAt + 1_000 - Date.now();
    if (this.reading || wait > 0) {
      this.deferred = setTimeout(
        () => {
          this.deferred = undefined;
          this.claimedNothing();
        },
        Math.max(wait, 50),
      );
      this.deferred.unref();
      return;
    }
    this.reading = true;
    this.readAt = Date.now();
    void this.usage()
      .then((rows) => {
        for (const r of rows) {
          if (r.room_at === null || this.waiting.has(r.name)) continue;
          this.waiting.set(r.name, { since: Date.now(), kinds: r.kinds });
          this.logger.info(
            { event: "limit_wait", limit: r.name, roomAt: r.room_at, closedUntil: r.closed_until },
            "holdfast: waiting for room on a limit",
          );
        }
      })
      .catch(() => {}) // only a log line is missed
      .finally(() => {
        this.reading = false;
      });
  }

  /** A run started: it was admitted on each limit its kind waited for. */
  started(task: Task, logger: Logger): void {
    if (this.waiting.size === 0) return;
    for (const [limit, w] of this.waiting) {
      if (!w.kinds.includes(task.kind)) continue;
      this.waiting.delete(limit);
      logger.info(
        { event: "limit_admitted", limit, waitedMs: Date.now() - w.since },
        "holdfast: admitted on a limit after waiting for room",
      );
    }
  }

  private async usage(): Promise<UsageRow[]> {
    const { rows } = await this.pool.query<UsageRow>(
      "select name, kinds, room_at, closed_until from holdfast.limit_usage() where kinds && $1::text[]",
      [this.kinds],
    );
    return rows;
  }
}

interface UsageRow {
  name: string;
  kinds: string[];
  room_at: Date | null;
  closed_until: Date | null;
}
