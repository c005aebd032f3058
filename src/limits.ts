import type pg from "pg";
import { asKnownError, InvalidArgumentError } from "./errors.js";
import { intervalLiteral } from "./kinds.js";
import type { Interval } from "./types.js";

/** A limit a provider imposes (`hf.defineLimit`): at most `units` per sliding window `per`. */
export interface LimitOptions {
  /** Units allowed in any window of `per` (a whole number of at least 1). */
  units: number;
  /** The window: ms, or a Postgres interval such as `"1 minute"` (longer than zero). */
  per: Interval;
}

/** One limit as `holdfast.limit_usage()` reports it (inspect, dashboard, metrics). */
export interface LimitUsage {
  name: string;
  units: number;
  /** The window in ms. */
  perMs: number;
  /** Units counted in the window now: reserved (runs not charged yet) + charged. */
  used: number;
  reserved: number;
  charged: number;
  /** Runs admitted in the window. */
  runs: number;
  /** Closed by a throttle until then (null: open). */
  closedUntil: Date | null;
  kinds: string[];
  /** Ready tasks of its kinds that cannot start for want of room. */
  waiting: number;
  /** When room frees for the largest reservation (null: there is room now). */
  roomAt: Date | null;
}

export const limitSql = {
  defineLimit: "select holdfast.define_limit($1, $2::bigint, $3::interval)",
  charge: "select holdfast.charge($1, $2, $3, $4::bigint) as ok",
  // The reopening time is computed on the server's clock, so client skew cannot shift it.
  throttle:
    "select holdfast.throttle($1, $2, $3, clock_timestamp() + $4::float8 * interval '1 millisecond') as ok",
  usage: `select name, units, extract(epoch from per) * 1000 as per_ms, used, reserved, charged,
    runs, closed_until, kinds, waiting, room_at from holdfast.limit_usage()`,
} as const;

interface UsageRow {
  name: string;
  units: string;
  per_ms: string;
  used: string;
  reserved: string;
  charged: string;
  runs: string;
  closed_until: Date | null;
  kinds: string[] | null;
  waiting: string;
  room_at: Date | null;
}

export function toLimitUsage(r: UsageRow): LimitUsage {
  return {
    name: r.name,
    units: Number(r.units),
    perMs: Number(r.per_ms),
    used: Number(r.used),
    reserved: Number(r.reserved),
    charged: Number(r.charged),
    runs: Number(r.runs),
    closedUntil: r.closed_until,
    kinds: r.kinds ?? [],
    waiting: Number(r.waiting),
    roomAt: r.room_at,
  };
}

export async function limitUsage(db: { query: pg.Pool["query"] }): Promise<LimitUsage[]> {
  const { rows } = await db.query<UsageRow>(limitSql.usage);
  return rows.map(toLimitUsage);
}

/** Whether `units` is a whole number of units a limit, a reservation or a charge may hold. */
export function isUnits(units: unknown, min: number): units is number {
  return typeof units === "number" && Number.isSafeInteger(units) && units >= min;
}

/** Validates and runs holdfast.define_limit (creates the limit or changes it). */
export async function defineLimit(pool: pg.Pool, name: string, opts: LimitOptions): Promise<void> {
  if (typeof name !== "string" || name === "")
    throw new InvalidArgumentError("holdfast: a limit name must be a non-empty string");
  const where = `limit ${JSON.stringify(name)}`;
  if (opts === null || typeof opts !== "object")
    throw new InvalidArgumentError(`holdfast: ${where}: options must be { units, per }`);
  if (!isUnits(opts.units, 1))
    throw new InvalidArgumentError(
      `holdfast: ${where}: units must be a whole number of at least 1`,
    );
  if (opts.per === 0)
    throw new InvalidArgumentError(`holdfast: ${where}: per (the window) must be longer than zero`);
  const per = intervalLiteral(opts.per, "per", where, InvalidArgumentError);
  try {
    await pool.query(limitSql.defineLimit, [name, opts.units, per]);
  } catch (err) {
    throw asKnownError(err);
  }
}

/** A kind's `limits` setting as define_kind's jsonb (units reserved per run, per limit). */
export function kindLimitsParam(
  limits: Record<string, number> | undefined,
  where: string,
  Err: new (message: string) => Error,
): string | null {
  if (limits === undefined) return null;
  if (limits === null || typeof limits !== "object" || Array.isArray(limits))
    throw new Err(`holdfast: ${where}: limits must be { "limit name": units reserved per run }`);
  for (const [name, units] of Object.entries(limits)) {
    if (!isUnits(units, 1))
      throw new Err(
        `holdfast: ${where}: limits.${name} must be a whole number of units of at least 1`,
      );
  }
  return JSON.stringify(limits);
}
