import pg from "pg";
import type { Logger } from "pino";
import { startDashboard } from "../dashboard/server.js";
import { Holdfast } from "../holdfast.js";
import type { Output } from "./io.js";

export interface DashboardCommandOptions {
  database: string;
  host: string;
  port: number;
  allowActions: boolean;
  token?: string | undefined;
  refreshSeconds?: number | undefined;
}

/** Serves the dashboard until SIGINT/SIGTERM; resolves with the exit code. */
export async function runDashboard(
  opts: DashboardCommandOptions,
  io: Output,
  log: Logger,
): Promise<number> {
  const pool = new pg.Pool({
    connectionString: opts.database,
    application_name: "holdfast:dashboard",
    max: 3,
    connectionTimeoutMillis: 5_000,
    // Client-side: a startup statement_timeout is refused by PgBouncer (and others).
    query_timeout: 10_000,
  });
  const hf = new Holdfast({ pool, logger: log });
  try {
    const dashboard = await startDashboard({
      hf,
      host: opts.host,
      port: opts.port,
      allowActions: opts.allowActions,
      token: opts.token,
      logger: log,
      ...(opts.refreshSeconds === undefined ? {} : { refreshMs: opts.refreshSeconds * 1000 }),
    });
    if (!["127.0.0.1", "::1", "localhost"].includes(opts.host))
      io.stderr.write(
        `holdfast dashboard: listening on ${opts.host}: anyone who can reach it can read it\n`,
      );
    // The token goes to the terminal that started the dashboard, never to the JSON log.
    io.stderr.write(
      dashboard.actionsUrl === null
        ? `holdfast dashboard (read-only): ${dashboard.url}\n`
        : `holdfast dashboard (actions enabled): open ${dashboard.actionsUrl}\n` +
            `  the token enables retry/cancel in that browser; API clients send "Authorization: Bearer ${dashboard.token}"\n`,
    );
    await new Promise<void>((resolve) => {
      process.once("SIGINT", () => resolve());
      process.once("SIGTERM", () => resolve());
    });
    await dashboard.close();
    return 0;
  } finally {
    await hf.close();
    await pool.end();
  }
}
