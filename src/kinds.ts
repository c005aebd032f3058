import type pg from "pg";
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

/** Runs holdfast.define_kind: creates the kind, or updates the settings given. */
export async function defineKind(pool: pg.Pool, kind: string, p: KindParams): Promise<void> {
  try {
    await pool.query(sql.defineKind, [
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
    ]);
  } catch (err) {
    throw asKnownError(err);
  }
}
