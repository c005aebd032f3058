import { sql } from "../queries/tasks.js";
import type { LockSession } from "./lock-session.js";
import type { ServerClock } from "./server-clock.js";

/**
 * Wakes an idle worker when the earliest delayed task of its kinds becomes ready (a timer, not
 * a poll), and re-claims with a backoff a key that is ready but held elsewhere. `at` is the
 * server's time, so the delay is measured on the server's clock (ServerClock), not Date.now().
 */
export class WakeTimer {
  private timer: NodeJS.Timeout | undefined;
  /** Backoff of the re-claim of ready keys someone else holds. */
  private readyRetryMs = 0;
  /** The due time (ms epoch) last found passed: seen again, its key is held elsewhere. */
  private passed = Number.NaN;

  constructor(
    private readonly kinds: string[],
    private readonly maxDelayMs: number,
    private readonly clock: ServerClock,
    private readonly wake: () => void,
  ) {}

  /** A claim got something: ready keys are being taken again, so the backoff starts over. */
  claimed(): void {
    this.readyRetryMs = 0;
  }

  /** Returns when the earliest delayed task is due (null: none, nothing to wake for). */
  async arm(session: LockSession): Promise<Date | null> {
    const [row] = await session.query<{ in_ms: number | null }>(sql.nextRunAt, [this.kinds]);
    return this.armIn(row?.in_ms ?? null);
  }

  /** Arms the timer for `ms` from now on the server's clock (the server computed it: no clock
   *  but its own is involved), and returns that time (server time; null: none pending). */
  armIn(ms: number | null): Date | null {
    return this.armAt(ms === null ? null : new Date(this.clock.now() + ms));
  }

  /** Arms the timer for `at`, the earliest head time of our kinds (null: none pending), and
   *  returns it. */
  armAt(at: Date | null): Date | null {
    this.clear();
    if (!at) return null;
    let delay = this.clock.until(at);
    if (delay <= 0 && at.getTime() !== this.passed) {
      // Passed the first time it comes back: it may have fallen due while the claim that
      // returned it ran (a timer fires up to a few ms early, the clock is known to within half
      // a round trip), so claim again at once.
      this.passed = at.getTime();
      delay = 0;
    } else if (delay <= 0) {
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
