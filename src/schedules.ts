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
  /** When ticks were missed (no worker ran), how many of the latest due ticks are enqueued:
   *  default 1 (one catch-up), at most 1000. */
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
  /** The latest tick enqueued, and its task. */
  lastTickAt: Date | null;
  lastTaskId: number | null;
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
  created_at: Date;
  updated_at: Date;
}

export const scheduleSql = {
  schedule: "select holdfast.schedule($1, $2, $3, $4, $5::jsonb, $6, $7, $8) as changed",
  unschedule: "select holdfast.unschedule($1) as removed",
  schedules: "select * from holdfast.schedules()",
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
  /** Due ticks to enqueue (the latest `backfill` of those after covered_until), oldest first. */
  ticks: Date[];
  /** Every tick at or before this is enqueued or skipped after the fire. */
  covered: Date;
  /** The next tick after now (null: the expression has no further run). */
  next: Date | null;
}

export function planTicks(cron: Cron, coveredUntil: Date, backfill: number, now: Date): TickPlan {
  const first = cron.nextRun(coveredUntil);
  if (first === null || first > now) return { ticks: [], covered: coveredUntil, next: first };
  // previousRuns includes a run in the same second as `now`, earlier than it.
  const due = cron
    .previousRuns(backfill, now)
    .filter((t) => t > coveredUntil && t <= now)
    .reverse();
  const covered = due.at(-1) ?? coveredUntil;
  return { ticks: due, covered, next: cron.nextRun(now) };
}

export function toSchedule(row: ScheduleRow): Schedule {
  let nextAt = row.next_at;
  if (nextAt === null) {
    // No leader has read this definition yet: compute it the way the leader will.
    try {
      const c = parseCron(row.cron, row.timezone);
      nextAt = c.nextRun(row.covered_until > new Date() ? row.covered_until : new Date());
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
