import { Cron } from "croner";
import { InvalidArgumentError } from "./errors.js";

/** Options of `hf.schedule(name, options)`. */
export interface ScheduleOptions<P = unknown> {
  /** Cron expression: 5 fields (minute precision) or 6 (seconds first), e.g. "0 3 * * *". */
  cron: string;
  kind: string;
  key: string;
  payload?: P;
  /** IANA time zone the cron fields are read in (default UTC), e.g. "Europe/Berlin". */
  timezone?: string;
  /** When ticks were missed for longer than a minute (no worker ran), how many of the latest
   *  due ticks are enqueued: default 1 (one catch-up), at most 1000. Ticks missed by at most a
   *  minute (a leader change, a Postgres restart) are all enqueued, late. */
  backfill?: number;
  /** Priority of the tasks it enqueues (default 0). */
  priority?: number;
}

/** A stored schedule, as `hf.schedules()` returns it. */
export interface Schedule<P = unknown> {
  name: string;
  cron: string;
  timezone: string | null;
  kind: string;
  key: string;
  payload: P;
  priority: number;
  backfill: number;
  /** The next tick to be enqueued (computed from the cron expression). */
  nextAt: Date | null;
  /** The latest tick enqueued, its task, and how late it was enqueued (ms after the tick). */
  lastTickAt: Date | null;
  lastTaskId: number | null;
  lastLateMs: number | null;
  createdAt: Date;
  updatedAt: Date;
}

/** A row of holdfast.schedules() as node-postgres returns it. */
export interface ScheduleRow {
  name: string;
  cron: string;
  timezone: string | null;
  kind: string;
  key: string;
  payload: unknown;
  priority: number;
  backfill: number;
  revision: number;
  covered_until: Date;
  next_at: Date | null;
  last_tick_at: Date | null;
  last_task_id: string | null;
  last_late_ms: number | null;
  created_at: Date;
  updated_at: Date;
  /** The server's clock when read: an unread definition's next tick is computed from it. */
  server_now?: Date;
}

export const scheduleSql = {
  schedule: "select holdfast.schedule($1, $2, $3, $4, $5::jsonb, $6, $7, $8) as changed",
  unschedule: "select holdfast.unschedule($1) as removed",
  schedules: "select s.*, clock_timestamp() as server_now from holdfast.schedules() s",
  fire: "select holdfast.fire_schedule($1, $2, $3::timestamptz[], $4, $5) as fired",
} as const;

/** Parses a cron expression; the error says what is wrong with it. */
export function parseCron(cron: string, timezone: string | null): Cron {
  try {
    const c = new Cron(cron, { timezone: timezone ?? "UTC" });
    c.nextRun(); // an unknown time zone is found on first use
    return c;
  } catch (err) {
    throw new InvalidArgumentError(
      `holdfast: invalid cron ${JSON.stringify(cron)}${timezone ? ` in ${timezone}` : ""}: ${(err as Error).message}`,
      { cause: err },
    );
  }
}

/** What the leader does with a schedule now: the ticks to enqueue, and the tick after them. */
export interface TickPlan {
  /** Due ticks to enqueue, oldest first (see planTicks for which). */
  ticks: Date[];
  /** Every tick at or before this is enqueued or skipped after the fire. */
  covered: Date;
  /** The next tick after now (null: the expression has no further run). */
  next: Date | null;
}

/**
 * Ticks missed by at most this long are all enqueued, late, whatever `backfill` says: a leader
 * change or a Postgres restart loses no tick of a frequent schedule. Ticks missed for longer
 * (no worker ran) are caught up by `backfill`: the latest `backfill` due ticks.
 */
export const catchUpWindowMs = 60_000;

// The boundary arithmetic of schedules, written once. Every interval is (after, until]:
// `after` exclusive (a tick at `after` is covered already), `until` inclusive (a tick at
// exactly `now` is due now). croner's own calls are exclusive at both ends (nextRun(t) > t,
// previousRuns(n, t) < t), so a tick equal to `now` must never be looked up with them alone.

/** The first tick strictly after `after` (null: none). */
export function tickAfter(cron: Cron, after: Date): Date | null {
  return cron.nextRun(after);
}

/** The next tick to show a user: the first at or after `now` that is not covered yet. */
export function upcomingTick(cron: Cron, coveredUntil: Date, now: Date): Date | null {
  const after = Math.max(coveredUntil.getTime(), now.getTime() - 1);
  return tickAfter(cron, new Date(after));
}

/** The latest `limit` ticks in (after, until], oldest first. */
export function ticksBetween(cron: Cron, after: Date, until: Date, limit: number): Date[] {
  if (limit < 1) return [];
  // Walked forward while the span is short (exact at both ends by construction)...
  const out: Date[] = [];
  for (let t = tickAfter(cron, after); t !== null && t <= until; t = tickAfter(cron, t)) {
    if (out.length === limit) {
      // ...and backward from `until` when it holds more than `limit`: ticks are whole seconds,
      // so previousRuns before until + 1 ms is previousRuns up to until, inclusive.
      return cron
        .previousRuns(limit, new Date(until.getTime() + 1))
        .filter((x) => x > after && x <= until)
        .reverse();
    }
    out.push(t);
  }
  return out;
}

/**
 * The ticks due at `now` that were not covered yet: every tick in (coveredUntil, now] within
 * catchUpWindowMs of now, or, when that is fewer, the latest `backfill` ticks in
 * (coveredUntil, now]. A tick at exactly `now` is due (inclusive end); `next` is the first
 * tick after now (exclusive start), so every tick is in exactly one of them.
 */
export function planTicks(cron: Cron, coveredUntil: Date, backfill: number, now: Date): TickPlan {
  const windowStart = new Date(Math.max(coveredUntil.getTime(), now.getTime() - catchUpWindowMs));
  let ticks = ticksBetween(cron, windowStart, now, 1000);
  if (ticks.length < backfill) ticks = ticksBetween(cron, coveredUntil, now, backfill);
  const covered = ticks.at(-1) ?? coveredUntil;
  return { ticks, covered, next: tickAfter(cron, now) };
}

export function toSchedule(row: ScheduleRow): Schedule {
  let nextAt = row.next_at;
  if (nextAt === null) {
    // No leader has read this definition yet: compute it the way the leader will (on the
    // server's clock).
    try {
      const c = parseCron(row.cron, row.timezone);
      nextAt = upcomingTick(c, row.covered_until, row.server_now ?? new Date());
    } catch {
      nextAt = null;
    }
  }
  return {
    name: row.name,
    cron: row.cron,
    timezone: row.timezone,
    kind: row.kind,
    key: row.key,
    payload: row.payload,
    priority: row.priority,
    backfill: row.backfill,
    nextAt,
    lastTickAt: row.last_tick_at,
    lastTaskId: row.last_task_id === null ? null : Number(row.last_task_id),
    lastLateMs: row.last_late_ms === null ? null : Math.round(row.last_late_ms),
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

/** Validates `hf.schedule` options; returns the parameters of holdfast.schedule(). */
export function scheduleParams(name: string, o: ScheduleOptions, payloadJson: string): unknown[] {
  if (typeof name !== "string" || name === "")
    throw new InvalidArgumentError("holdfast: schedule name must be a non-empty string");
  if (typeof o !== "object" || o === null)
    throw new InvalidArgumentError("holdfast: schedule options must be an object");
  const { cron, kind, key, timezone, backfill, priority } = o;
  if (typeof cron !== "string") throw new InvalidArgumentError("holdfast: cron must be a string");
  if (typeof kind !== "string" || kind === "")
    throw new InvalidArgumentError("holdfast: kind must be a non-empty string");
  if (typeof key !== "string" || key === "")
    throw new InvalidArgumentError("holdfast: key must be a non-empty string");
  if (timezone !== undefined && (typeof timezone !== "string" || timezone === ""))
    throw new InvalidArgumentError("holdfast: timezone must be an IANA time zone name");
  if (backfill !== undefined && !(Number.isInteger(backfill) && backfill >= 1 && backfill <= 1000))
    throw new InvalidArgumentError("holdfast: backfill must be an integer from 1 to 1000");
  if (priority !== undefined && !Number.isInteger(priority))
    throw new InvalidArgumentError("holdfast: priority must be an integer");
  parseCron(cron, timezone ?? null);
  return [name, cron, kind, key, payloadJson, timezone ?? null, backfill ?? 1, priority ?? 0];
}
