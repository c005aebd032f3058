import type pg from "pg";
import type { Logger } from "pino";
import { asKnownError, type HoldfastError } from "./errors.js";
import { kindLimitsParam } from "./limits.js";
import { sql } from "./queries/tasks.js";
import type { DefineKindOptions, Interval, Retention } from "./types.js";

/** Parameters of `holdfast.define_kind` (null keeps the stored value). */
export interface KindParams {
  maxAttempts: number | null;
  /** A Postgres interval literal. */
  minInterval: string | null;
  batchMax: number | null;
  strictOrder: boolean | null;
  /** 0 removes the cap. */
  maxRunning: number | null;
  keepCheckpoint: boolean | null;
  /** Interval literals per end state (null keeps the stored value). */
  retainSucceeded: string | null;
  retainCancelled: string | null;
  retainFailed: string | null;
  /** End states kept forever. */
  keepForever: string[] | null;
  /** JSON: units each run reserves per limit (null keeps the stored limits). */
  limits: string | null;
}

const endStates = ["succeeded", "cancelled", "failed"] as const;

type ErrorCtor = new (message: string) => HoldfastError;

/** Validates kind settings before anything is written; throws `Err` saying what to fix. */
export function kindParams(kind: string, opts: DefineKindOptions, Err: ErrorCtor): KindParams {
  const where = `kind ${JSON.stringify(kind)}`;
  const { maxAttempts, minInterval, batch, strictOrder, maxRunning, retention } = opts;
  if (
    maxRunning !== undefined &&
    maxRunning !== null &&
    !(Number.isInteger(maxRunning) && maxRunning >= 1 && maxRunning <= 10_000)
  ) {
    throw new Err(`holdfast: ${where}: maxRunning must be an integer from 1 to 10000, or null`);
  }
  if (maxAttempts !== undefined && !(Number.isInteger(maxAttempts) && maxAttempts >= 1)) {
    throw new Err(`holdfast: ${where}: maxAttempts must be an integer of at least 1`);
  }
  if (batch !== undefined) {
    const max = batch?.max;
    if (!(Number.isInteger(max) && max >= 1 && max <= 1000))
      throw new Err(`holdfast: ${where}: batch.max must be an integer from 1 to 1000`);
  }
  if (strictOrder !== undefined && typeof strictOrder !== "boolean") {
    throw new Err(`holdfast: ${where}: strictOrder must be true or false`);
  }
  const { keepCheckpoint } = opts;
  if (keepCheckpoint !== undefined && typeof keepCheckpoint !== "boolean") {
    throw new Err(`holdfast: ${where}: keepCheckpoint must be true or false`);
  }
  const retain = retentionParams(retention, where, Err);
  return {
    ...retain,
    maxAttempts: maxAttempts ?? null,
    minInterval:
      minInterval === undefined ? null : intervalLiteral(minInterval, "minInterval", where, Err),
    batchMax: batch?.max ?? null,
    strictOrder: strictOrder ?? null,
    maxRunning: maxRunning === undefined ? null : (maxRunning ?? 0),
    keepCheckpoint: keepCheckpoint ?? null,
    limits: kindLimitsParam(opts.limits, where, Err),
  };
}

/** Retention per end state: an interval literal, or the state listed as kept forever. */
function retentionParams(
  retention: Retention | undefined,
  where: string,
  Err: ErrorCtor,
): Pick<KindParams, "retainSucceeded" | "retainCancelled" | "retainFailed" | "keepForever"> {
  const literal: Record<(typeof endStates)[number], string | null> = {
    succeeded: null,
    cancelled: null,
    failed: null,
  };
  const forever: string[] = [];
  if (retention !== undefined) {
    if (retention === null || typeof retention !== "object" || Array.isArray(retention))
      throw new Err(`holdfast: ${where}: retention must be { succeeded, cancelled, failed }`);
    for (const name of Object.keys(retention)) {
      if (!(endStates as readonly string[]).includes(name))
        throw new Err(
          `holdfast: ${where}: retention.${name} is not an end state (succeeded, cancelled, failed)`,
        );
    }
    for (const state of endStates) {
      const value = retention[state];
      if (value === undefined) continue;
      if (value === null) forever.push(state);
      else literal[state] = intervalLiteral(value, `retention.${state}`, where, Err);
    }
  }
  return {
    retainSucceeded: literal.succeeded,
    retainCancelled: literal.cancelled,
    retainFailed: literal.failed,
    keepForever: forever.length > 0 ? forever : null,
  };
}

/** A Postgres interval literal from ms or interval text (`name` and `where` for the error). */
export function intervalLiteral(
  value: Interval,
  name: string,
  where: string,
  Err: ErrorCtor,
): string {
  if (typeof value === "number") {
    if (!Number.isFinite(value) || value < 0)
      throw new Err(`holdfast: ${where}: ${name} must be a non-negative number of ms`);
    return `${value} milliseconds`;
  }
  // Postgres parses the text; a negative interval is refused there (HF002).
  if (typeof value !== "string" || value.trim() === "")
    throw new Err(`holdfast: ${where}: ${name} must be ms or an interval like "8 hours"`);
  return value;
}

/** define_kind's arguments, in its parameter order. */
function defineKindArgs(kind: string, p: KindParams): unknown[] {
  return [
    kind,
    p.maxAttempts,
    p.minInterval,
    p.batchMax,
    p.strictOrder,
    p.maxRunning,
    p.keepCheckpoint,
    p.retainSucceeded,
    p.retainCancelled,
    p.retainFailed,
    p.keepForever,
    p.limits,
  ];
}

/** Runs holdfast.define_kind: creates the kind, or updates the settings given. */
export async function defineKind(pool: pg.Pool, kind: string, p: KindParams): Promise<void> {
  try {
    await pool.query(sql.defineKind, defineKindArgs(kind, p));
  } catch (err) {
    throw asKnownError(err);
  }
}

/**
 * The stored settings a declaration would change, as text (stored, declared), in define_kind's
 * terms: only settings the declaration gives, compared as Postgres normalizes them (so "1 hour"
 * and 3600000 ms are the same). No row: the kind does not exist yet.
 */
const changedSettingsSql = `select d.setting, d.stored, d.declared
  from holdfast.kinds k cross join lateral (values
    ('maxAttempts', k.max_attempts::text, $2::int::text),
    ('minInterval', k.min_interval::text, $3::interval::text),
    ('batch.max', k.batch_max::text, $4::int::text),
    ('strictOrder', k.strict_order::text, $5::boolean::text),
    ('maxRunning', coalesce(k.max_running::text, 'none'),
      case when $6::int = 0 then 'none' else $6::int::text end),
    ('keepCheckpoint', k.keep_checkpoint::text, $7::boolean::text),
    ('retention.succeeded', coalesce(k.retain_succeeded::text, 'forever'),
      case when 'succeeded' = any ($11::text[]) then 'forever' else $8::interval::text end),
    ('retention.cancelled', coalesce(k.retain_cancelled::text, 'forever'),
      case when 'cancelled' = any ($11::text[]) then 'forever' else $9::interval::text end),
    ('retention.failed', coalesce(k.retain_failed::text, 'forever'),
      case when 'failed' = any ($11::text[]) then 'forever' else $10::interval::text end)
  ) d (setting, stored, declared)
  where k.kind = $1 and d.declared is not null and d.declared is distinct from d.stored`;

/**
 * A worker's handler entries, at start: each kind is created if missing, and only the settings
 * an entry declares are written (hf.defineKind / SQL define_kind own the rest). A declared
 * setting that differs from the stored one is logged with both values before it is written:
 * two deployments declaring different values would otherwise take turns silently, each start
 * rewriting what the other set. (Reading the stored settings needs SELECT on holdfast.kinds,
 * e.g. holdfast_observer; without it the comparison is skipped.)
 */
export async function declareKinds(
  pool: pg.Pool,
  kinds: Iterable<{ kind: string; params: KindParams }>,
  logger: Logger,
): Promise<void> {
  for (const { kind, params } of kinds) {
    const args = defineKindArgs(kind, params);
    const declares = args.slice(1).some((v) => v !== null);
    if (declares) {
      const changes = await pool
        // (Limits are not compared: their reservations live in kind_limits, not here.)
        .query<{ setting: string; stored: string; declared: string }>(
          changedSettingsSql,
          args.slice(0, 11),
        )
        .then(
          (r) => r.rows,
          (err: unknown) => {
            logger.debug(
              { event: "kind_settings_unread", kind, err },
              "holdfast: kind settings unread",
            );
            return [];
          },
        );
      if (changes.length > 0) {
        const list = changes.map((c) => `${c.setting} ${c.stored} -> ${c.declared}`).join(", ");
        logger.warn(
          { event: "kind_settings_changed", kind, changes },
          `holdfast: this worker changes kind ${JSON.stringify(kind)}'s stored settings (${list}); ` +
            "if another worker declares the old values they take turns at each start: " +
            "declare them once with hf.defineKind (or in one worker) instead",
        );
      }
    }
    try {
      await pool.query(sql.defineKind, args);
    } catch (err) {
      throw asKnownError(err);
    }
  }
}
