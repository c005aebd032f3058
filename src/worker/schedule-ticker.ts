import type { Cron } from "croner";
import type { Logger } from "pino";
import { LockLostError } from "../errors.js";
import { parseCron, planTicks, type ScheduleRow, scheduleSql, tickAfter } from "../schedules.js";
import { maxTimerMs } from "./limits-of-node.js";
import type { LockSession } from "./lock-session.js";
import type { ServerClock } from "./server-clock.js";

interface Loaded {
  name: string;
  revision: number;
  backfill: number;
  coveredUntil: Date;
  /** The next tick after coveredUntil. */
  due: Date | null;
  cron: Cron;
}

/**
 * Recurring schedules, run by the sweep leader only. It reads the schedules once (on election,
 * and when one is declared or removed: NOTIFY holdfast_schedules), computes each next tick, and
 * sleeps on one timer until the earliest: an idle cluster spends no query between ticks. At a
 * tick it calls holdfast.fire_schedule(), which enqueues each tick once whoever calls it.
 *
 * Ticks are instants on the server's clock (ServerClock): a leader whose wall clock is off
 * fires on the database's second, and a tick's task (run_at = the tick) is never enqueued
 * before the database reaches it. The cron fields are read in the schedule's time zone (UTC
 * by default), never the process's TZ.
 */
export class ScheduleTicker {
  private loaded: Loaded[] | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** Schedules whose expression failed to parse, by name and revision (logged once). */
  private readonly invalid = new Set<string>();

  constructor(
    private readonly logger: Logger,
    private readonly clock: ServerClock,
    /** Asks the worker to call run() on its lock session. */
    private readonly due: () => void,
    /** Ticks this leader enqueued, each with how late (ms after the tick) its enqueue committed. */
    private readonly fired: (schedule: string, ticks: Date[], lateMs: number[]) => void,
  ) {}

  /** The definitions changed (or leadership began): read them again at the next run(). */
  invalidate(): void {
    this.loaded = undefined;
  }

  /** Leadership ended. */
  stop(): void {
    this.loaded = undefined;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Fires what is due, then sleeps until the earliest next tick. */
  async run(session: LockSession): Promise<void> {
    if (!this.loaded) this.loaded = await this.load(session);
    const now = new Date(this.clock.now());
    for (const s of this.loaded) {
      if (s.due === null || s.due > now) continue;
      const plan = planTicks(s.cron, s.coveredUntil, s.backfill, now);
      let row: { fired: number } | undefined;
      try {
        [row] = await session.query<{ fired: number }>(scheduleSql.fire, [
          s.name,
          s.revision,
          plan.ticks,
          plan.covered,
          plan.next,
        ]);
      } catch (err) {
        if (err instanceof LockLostError || session.isLost) throw err;
        // The server refused this schedule's enqueue: the others still run, and this one
        // tries again at its next tick.
        this.logger.error(
          { event: "schedule_failed", schedule: s.name, ticks: plan.ticks, err },
          "holdfast: a schedule's tick could not be enqueued",
        );
        s.due = plan.next;
        continue;
      }
      if (row?.fired === -1) {
        this.loaded = undefined; // changed or removed meanwhile: read again
        this.due();
        return;
      }
      if (row && row.fired > 0) {
        const committed = this.clock.now();
        const lateMs = plan.ticks.map((t) => Math.max(0, committed - t.getTime()));
        this.logger.info(
          {
            event: "schedule_fired",
            schedule: s.name,
            ticks: plan.ticks,
            enqueued: row.fired,
            lateMs,
          },
          "holdfast: schedule enqueued its tick",
        );
        this.fired(s.name, plan.ticks, lateMs);
      }
      s.coveredUntil = plan.covered;
      s.due = plan.next;
    }
    this.arm();
  }

  private async load(session: LockSession): Promise<Loaded[]> {
    const rows = await session.query<ScheduleRow>(scheduleSql.schedules);
    const loaded: Loaded[] = [];
    for (const r of rows) {
      let cron: Cron;
      try {
        cron = parseCron(r.cron, r.timezone);
      } catch (err) {
        const id = `${r.name}@${r.revision}`;
        if (!this.invalid.has(id)) {
          this.invalid.add(id);
          this.logger.error(
            { event: "schedule_invalid", schedule: r.name, err },
            "holdfast: schedule has an invalid cron expression; it does not run",
          );
        }
        continue;
      }
      const due = tickAfter(cron, r.covered_until);
      loaded.push({
        name: r.name,
        revision: r.revision,
        backfill: r.backfill,
        coveredUntil: r.covered_until,
        due,
        cron,
      });
      // Record the next tick of a definition no leader has seen (for schedules() and inspect).
      if (r.next_at === null && due !== null) {
        const next = this.clock.until(due) > 0 ? due : null;
        if (next)
          await session.query(scheduleSql.fire, [r.name, r.revision, [], r.covered_until, next]);
      }
    }
    return loaded;
  }

  private arm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const times = (this.loaded ?? []).flatMap((s) => (s.due ? [s.due.getTime()] : []));
    if (times.length === 0) return;
    const delay = Math.max(0, this.clock.until(Math.min(...times)));
    this.timer = setTimeout(() => this.due(), Math.min(delay, maxTimerMs));
    this.timer.unref();
  }
}
