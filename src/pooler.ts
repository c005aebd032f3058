import pg from "pg";
import { asConnectionError, ConfigError } from "./errors.js";

/** What a connection keeps of one server session, as far as holdfast can tell. */
export type SessionMode = "session" | "transaction" | "statement";

/**
 * The refusal of a connection whose server session changes under it. The message names the
 * mode and the three fixes; `what` says which connection (worker sessions, migrate).
 */
export function poolerRefusal(mode: Exclude<SessionMode, "session">, what: string): ConfigError {
  return new ConfigError(
    `holdfast: ${what} goes through a connection pooler in ${mode} mode (PgBouncer ` +
      `pool_mode=${mode}, or a provider's pooled URL): it does not keep one server session ` +
      "per connection, so advisory locks and LISTEN cannot work through it. Use a direct " +
      "database URL, a pooler in session mode, or pass sessionConnectionString (CLI " +
      "--session-url, env HOLDFAST_SESSION_URL) with a direct URL for the worker's sessions " +
      "and migrate, keeping the pooled URL for enqueue, inspect and the dashboard",
  );
}

/** Backend identity: a pid alone could be reused by a later backend. */
const whoSql = `select a.pid, a.backend_start::text as started
  from pg_stat_get_activity(pg_backend_pid()) a`;

/**
 * Finds out whether `connection` keeps one server session per client connection. Two clients
 * stay open side by side and ask, in turn, which backend serves them: directly or through a
 * session pooler each keeps its own backend; through a transaction or statement pooler a
 * backend serves whoever sends the next statement, so one client sees its backend change, or
 * both see the same one (A, B, A, A, B, B: caught with a LIFO pool of any size and a FIFO pool
 * of two). Only single unnamed statements are sent, no setting, no lock, no prepared
 * statement, so nothing is left on a pooled backend. Statement mode is then told from
 * transaction mode by a transaction block, which a statement pooler refuses.
 */
export async function detectSessionMode(
  connection: pg.ClientConfig,
  timeoutMs = 10_000,
): Promise<SessionMode> {
  const open = async (): Promise<pg.Client> => {
    const c = new pg.Client({
      ...connection,
      application_name: "holdfast:pooler-check",
      query_timeout: timeoutMs,
      connectionTimeoutMillis: connection.connectionTimeoutMillis ?? timeoutMs,
    });
    c.on("error", () => {}); // a pooler that drops the client: the failing query reports it
    await c.connect();
    return c;
  };
  const clients: pg.Client[] = [];
  try {
    try {
      clients.push(await open(), await open());
    } catch (err) {
      throw asConnectionError(err, "cannot connect to Postgres");
    }
    const [a, b] = clients as [pg.Client, pg.Client];
    const seen: Record<"a" | "b", Set<string>> = { a: new Set(), b: new Set() };
    try {
      for (const [name, client] of [
        ["a", a],
        ["b", b],
        ["a", a],
        ["a", a],
        ["b", b],
        ["b", b],
      ] as const) {
        const { rows } = await client.query<{ pid: number; started: string | null }>(whoSql);
        seen[name].add(`${rows[0]?.pid}@${rows[0]?.started}`);
      }
    } catch (err) {
      throw asConnectionError(err, "cannot check the connection for a pooler");
    }
    const shared = [...seen.a].some((id) => seen.b.has(id));
    if (seen.a.size === 1 && seen.b.size === 1 && !shared) return "session";
    try {
      await a.query("begin");
      await a.query("rollback");
      return "transaction";
    } catch {
      return "statement";
    }
  } finally {
    await Promise.all(clients.map((c) => c.end().catch(() => {})));
  }
}

/** Throws the refusal unless `connection` keeps one server session per connection. */
export async function requireSessions(connection: pg.ClientConfig, what: string): Promise<void> {
  const mode = await detectSessionMode(connection);
  if (mode !== "session") throw poolerRefusal(mode, what);
}
