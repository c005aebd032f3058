import type pg from "pg";
import { asKnownError, EnqueueItemError, InvalidArgumentError } from "./errors.js";
import { intervalLiteral } from "./kinds.js";
import { sql } from "./queries/tasks.js";
import type { TraceFields } from "./tracing.js";
import type { EnqueueOptions, EnqueueResult } from "./types.js";

/**
 * One task to enqueue, converted for SQL. Only what SQL cannot see once a value is converted
 * is checked here (a runAt that is not a Date, a number that is not an integer, a payload JSON
 * cannot represent). The limits and rules (key length, payload size, on_dedupe, debounce
 * needs a dedupe key…) are holdfast._task_error's alone (sql/api/30_enqueue.sql): their HF002
 * reaches the caller as InvalidArgumentError, as EnqueueItemError naming the item from
 * enqueue_many.
 */
interface TaskItem {
  key: string;
  /** JSON text; undefined: the default payload ({}). */
  payload: string | undefined;
  runAt: Date | null;
  priority: number | null;
  dedupeKey: string | null;
  maxAttempts: number | null;
  onDedupe: string | null;
  debounce: string | null;
  maxWait: string | null;
}

type Fail = (message: string, cause?: unknown) => Error;

function taskItem(options: EnqueueOptions<unknown>, fail: Fail): TaskItem {
  if (typeof options !== "object" || options === null)
    throw fail("enqueue options must be an object with a key");
  const { key, payload, runAt, priority, dedupeKey, maxAttempts, onDedupe, debounce, maxWait } =
    options;
  if (typeof key !== "string") throw fail("key must be a non-empty string");
  if (runAt !== undefined && !(runAt instanceof Date && !Number.isNaN(runAt.getTime())))
    throw fail("runAt must be a valid Date");
  if (priority !== undefined && !Number.isInteger(priority))
    throw fail("priority must be an integer");
  if (maxAttempts !== undefined && !(Number.isInteger(maxAttempts) && maxAttempts >= 1))
    throw fail("maxAttempts must be an integer of at least 1");
  if (dedupeKey !== undefined && typeof dedupeKey !== "string")
    throw fail("dedupeKey must be a string");
  if (onDedupe !== undefined && typeof onDedupe !== "string")
    throw fail("onDedupe must be keep, replace or merge");
  const interval = (v: unknown, name: string): string | null => {
    if (v === undefined) return null;
    try {
      return intervalLiteral(v as number | string, name, "enqueue", InvalidArgumentError);
    } catch (err) {
      throw fail(`${name} must be ms or an interval like "10 minutes"`, err);
    }
  };
  return {
    key,
    payload: encodePayload(payload, fail),
    runAt: runAt ?? null,
    priority: priority ?? null,
    dedupeKey: dedupeKey ?? null,
    maxAttempts: maxAttempts ?? null,
    onDedupe: onDedupe ?? null,
    debounce: interval(debounce, "debounce"),
    maxWait: interval(maxWait, "maxWait"),
  };
}

/** JSON text of a payload; undefined for none. Refuses what JSON cannot represent faithfully. */
export function encodePayload(payload: unknown, fail: Fail = plainFail): string | undefined {
  if (payload === undefined) return undefined;
  let json: string | undefined;
  try {
    json = JSON.stringify(payload);
  } catch (err) {
    throw fail(`payload is not JSON-serializable: ${(err as Error).message}`, err);
  }
  if (json === undefined) throw fail("payload is not JSON-serializable");
  return json;
}

function plainFail(message: string, cause?: unknown): Error {
  return new InvalidArgumentError(`holdfast: ${message}`, { cause });
}

/** enqueue_many's item: the SQL parameter names as fields, the payload spliced in as JSON. */
function itemJson(t: TaskItem, trace: TraceFields | undefined): string {
  const fields: Record<string, unknown> = { key: t.key };
  if (t.runAt) fields.run_at = t.runAt.toISOString();
  if (t.priority !== null) fields.priority = t.priority;
  if (t.dedupeKey !== null) fields.dedupe_key = t.dedupeKey;
  if (t.maxAttempts !== null) fields.max_attempts = t.maxAttempts;
  if (t.onDedupe !== null) fields.on_dedupe = t.onDedupe;
  if (t.debounce !== null) fields.debounce = t.debounce;
  if (t.maxWait !== null) fields.max_wait = t.maxWait;
  if (trace) {
    fields.traceparent = trace.traceparent;
    if (trace.tracestate !== null) fields.tracestate = trace.tracestate;
  }
  const rest = JSON.stringify(fields);
  return t.payload === undefined ? rest : `{"payload":${t.payload},${rest.slice(1)}`;
}

const enqueueManySql = "select id, deduped from holdfast.enqueue_many($1, $2::jsonb)";
/** sql.enqueue with the producer's trace context (only a traced enqueue sends it). */
const enqueueTracedSql =
  "select id, deduped from holdfast.enqueue_task($1, $2, $3::jsonb, $4, $5, $6, $7, $8, $9::interval, $10::interval, traceparent => $11, tracestate => $12)";

/** Anything holdfast can run a producer statement on: the pool, or the caller's client. */
type Runner = Pick<pg.ClientBase, "query">;

/** holdfast.enqueue_task on `runner` (a pool: its own commit; a client: the caller's). */
export async function enqueueOne(
  runner: Runner,
  kind: string,
  options: EnqueueOptions<unknown>,
  trace?: TraceFields,
): Promise<EnqueueResult> {
  checkKind(kind);
  const t = taskItem(options, plainFail);
  let rows: Array<{ id: string; deduped: boolean }>;
  try {
    rows = (
      await runner.query<{ id: string; deduped: boolean }>(trace ? enqueueTracedSql : sql.enqueue, [
        kind,
        t.key,
        t.payload ?? "{}",
        t.runAt,
        t.priority ?? 0,
        t.dedupeKey,
        t.maxAttempts,
        t.onDedupe ?? "keep",
        t.debounce,
        t.maxWait,
        ...(trace ? [trace.traceparent, trace.tracestate] : []),
      ])
    ).rows;
  } catch (err) {
    throw asKnownError(err);
  }
  const row = rows[0];
  if (!row) throw new InvalidArgumentError("holdfast: enqueue returned no row");
  return { id: Number(row.id), deduped: row.deduped };
}

/** holdfast.enqueue_many on `runner`: one statement, results in input order. */
export async function enqueueMany(
  runner: Runner,
  kind: string,
  items: ReadonlyArray<EnqueueOptions<unknown>>,
  trace?: TraceFields,
): Promise<EnqueueResult[]> {
  checkKind(kind);
  if (!Array.isArray(items))
    throw new InvalidArgumentError("holdfast: enqueueMany takes an array of enqueue options");
  if (items.length === 0) return [];
  const parts = items.map((options, index) =>
    itemJson(
      taskItem(
        options,
        (message, cause) =>
          new EnqueueItemError(`holdfast: tasks[${index}]: ${message}`, index, { cause }),
      ),
      trace,
    ),
  );
  let rows: Array<{ id: string; deduped: boolean }>;
  try {
    rows = (
      await runner.query<{ id: string; deduped: boolean }>(enqueueManySql, [
        kind,
        `[${parts.join(",")}]`,
      ])
    ).rows;
  } catch (err) {
    throw asKnownError(err);
  }
  return rows.map((r) => ({ id: Number(r.id), deduped: r.deduped }));
}

function checkKind(kind: unknown): void {
  if (typeof kind !== "string" || kind === "")
    throw new InvalidArgumentError("holdfast: kind must be a non-empty string");
}
