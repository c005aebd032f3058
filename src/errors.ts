/** Base class of every error holdfast throws. `code` is stable: match on it, never on text. */
export class HoldfastError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** Bad options given to `new Holdfast()` or `hf.worker()`. */
export class ConfigError extends HoldfastError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("HF_CONFIG", message, options);
  }
}

/** The database could not be reached or the connection string is malformed. */
export class ConnectionError extends HoldfastError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("HF_CONNECTION", message, options);
  }
}

/** A task of a kind that no one has defined (SQLSTATE HF001). */
export class UnknownKindError extends HoldfastError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("HF001", message, options);
  }
}

/** An argument the SQL API rejects: empty key, oversized or non-JSON payload... (HF002). */
export class InvalidArgumentError extends HoldfastError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("HF002", message, options);
  }
}

/** One item of `hf.enqueueMany` (SQL enqueue_many) was refused, so the whole call was: nothing
 *  was written. `index` is the item's position in the array given (0-based). */
export class EnqueueItemError extends InvalidArgumentError {
  readonly index: number;
  constructor(message: string, index: number, options?: { cause?: unknown }) {
    super(message, options);
    this.index = index;
  }
}

/** No task with that id (HF003). */
export class TaskNotFoundError extends HoldfastError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("HF003", message, options);
  }
}

/** A newer claim of the key exists: this run lost its lock and must not write (HF004). */
export class StaleFenceError extends HoldfastError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("HF004", message, options);
  }
}

/** The database role lacks the holdfast role this call needs (SQLSTATE 42501): grant
 *  holdfast_producer, holdfast_worker or holdfast_observer. */
export class PermissionDeniedError extends HoldfastError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("42501", message, options);
  }
}

/** The worker's lock session ended or stopped answering: every running handler lost its lock. */
export class LockLostError extends HoldfastError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("HF_LOCK_LOST", message, options);
  }
}

/** The task was cancelled while it ran. */
export class TaskCancelledError extends HoldfastError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("HF_CANCELLED", message, options);
  }
}

/** The schema cannot be migrated: an API file failed, or the database is in a state this
 *  version cannot upgrade from (the message says which). */
export class MigrationError extends HoldfastError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("HF_MIGRATION", message, options);
  }
}

/**
 * Thrown by a handler when a provider refused its call for a limit (an HTTP 429): the limit is
 * closed for every worker for `retryAfterMs`, and the run goes back to pending in its place
 * without spending an attempt; it starts again once the limit reopens (docs/limits.md).
 */
export class ThrottledError extends HoldfastError {
  readonly limit: string;
  readonly retryAfterMs: number;
  constructor(limit: string, retryAfterMs: number, options?: { cause?: unknown }) {
    super("HF_THROTTLED", `holdfast: limit ${limit} throttled for ${retryAfterMs} ms`, options);
    if (typeof limit !== "string" || limit === "")
      throw new InvalidArgumentError("holdfast: ThrottledError needs the limit's name");
    if (typeof retryAfterMs !== "number" || !Number.isFinite(retryAfterMs) || retryAfterMs < 0)
      throw new InvalidArgumentError(
        "holdfast: ThrottledError's retryAfterMs must be 0 or more ms",
      );
    this.limit = limit;
    this.retryAfterMs = retryAfterMs;
  }
}

/** The worker is stopping and its shutdown timeout elapsed. */
export class ShutdownError extends HoldfastError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("HF_SHUTDOWN", message, options);
  }
}

const bySqlState: Record<
  string,
  new (
    message: string,
    options?: { cause?: unknown },
  ) => HoldfastError
> = {
  HF001: UnknownKindError,
  HF002: InvalidArgumentError,
  HF003: TaskNotFoundError,
  HF004: StaleFenceError,
  "42501": PermissionDeniedError, // insufficient_privilege
  "22P02": InvalidArgumentError, // invalid_text_representation (e.g. malformed JSON)
  "23514": InvalidArgumentError, // check_violation
  "22007": InvalidArgumentError, // invalid_datetime_format (e.g. a malformed interval)
  "22008": InvalidArgumentError, // datetime_field_overflow
  "22015": InvalidArgumentError, // interval_field_overflow
};

/** Node errors that mean the server is not there (as opposed to a query it rejected). */
const connectionCodes = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "ETIMEDOUT",
  "ECONNRESET",
  "EHOSTUNREACH",
  "EAI_AGAIN",
  "57P01",
  "57P03",
  "08006",
  "08001",
  "08004",
  "3D000",
  "28P01",
  "28000",
]);

function codeOf(err: unknown): string | undefined {
  if (typeof err === "object" && err !== null && "code" in err) {
    const code = (err as { code: unknown }).code;
    return typeof code === "string" ? code : undefined;
  }
  return undefined;
}

/** The item an HF002 of enqueue_many names: its detail is {"index": i} (structured, so no
 *  message text is parsed). */
function itemIndex(err: unknown): number | undefined {
  const detail = (err as { detail?: unknown }).detail;
  if (typeof detail !== "string" || !detail.startsWith("{")) return undefined;
  try {
    const index = (JSON.parse(detail) as { index?: unknown }).index;
    return Number.isInteger(index) ? (index as number) : undefined;
  } catch {
    return undefined;
  }
}

/** Maps a `pg` error to the typed error for its SQLSTATE; other errors pass through unchanged. */
export function translateError(err: unknown): unknown {
  if (err instanceof HoldfastError) return err;
  const code = codeOf(err);
  if (code === undefined) return err;
  const message = err instanceof Error ? err.message : String(err);
  const index = code === "HF002" ? itemIndex(err) : undefined;
  if (index !== undefined) return new EnqueueItemError(message, index, { cause: err });
  const Ctor = bySqlState[code];
  if (Ctor) return new Ctor(message, { cause: err });
  if (connectionCodes.has(code)) {
    return new ConnectionError(`holdfast: cannot reach Postgres (${code}): ${message}`, {
      cause: err,
    });
  }
  return err;
}

/** For failures to connect: the typed error of a known SQLSTATE, else a ConnectionError. */
export function asConnectionError(err: unknown, what: string): HoldfastError {
  const e = translateError(err);
  if (e instanceof HoldfastError) return e;
  const detail = err instanceof Error ? err.message : String(err);
  return new ConnectionError(`holdfast: ${what}: ${detail}`, { cause: err });
}

/** For any query error: the typed error of its SQLSTATE; a socket error (no SQLSTATE) means
 *  the server could not be reached; anything else unchanged. */
export function asKnownError(err: unknown): unknown {
  const e = translateError(err);
  if (e !== err) return e;
  if (err instanceof Error && !("severity" in err))
    return asConnectionError(err, "cannot reach Postgres");
  return err;
}
