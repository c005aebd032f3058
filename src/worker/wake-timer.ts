import { fromNowMs, sql } from "../queries/tasks.js";
import type { LockSession } from "./lock-session.js";

/**
 * Wakes an idle worker when the earliest delayed task of its kinds becomes ready (a timer, not
 * a poll), and re-claims with a backoff a key that is ready but held elsewhere.
 */
export class WakeTimer {
  private timer: NodeJS.Timeout | undefined;
  /** Backoff of the re-claim of ready keys someone else holds. */
  private readyRetryMs = 0;

  constructor(
    private readonly kinds: string[],
    private readonly maxDelayMs: number,
    private readonly wake: () => void,
  ) {}

  /** A claim got something: ready keys are being taken again, so the backoff starts over. */
  claimed(): void {
    this.readyRetryMs = 0;
  }

  /** Returns when the earliest delayed task is due (null: none, nothing to wake for). */
  async arm(session: LockSession): Promise<Date | null> {
    const [row] = await session.query<{ in_ms: number | null }>(sql.nextRunAt, [this.kinds]);
    return this.armAt(fromNowMs(row?.in_ms));
  }

  /** Arms the timer for `at`, the earliest head time of our kinds (null: none pending), and
   *  returns it. */
  armAt(at: Date | null): Date | null {
    this.clear();
    if (!at) return null;
    let delay = at.getTime() - Date.now();
    if (delay <= 0) {
      // A key is ready but was not ours to take: its lock or row is held elsewhere (a claim in
      // flight, a fenced write of a run that lost its lock). Nothing will notify us when that
      // ends, so look again soon, backing off to at most once a second.
      this.readyRetryMs = Math.min(Math.max(this.readyRetryMs * 2, 50), 1_000);
      delay = this.readyRetryMs;
    }
    this.timer = setTimeout(this.wake, Math.min(delay, this.maxDelayMs) + 1);
    this.timer.unref();
    return at;
  }

  clear(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
