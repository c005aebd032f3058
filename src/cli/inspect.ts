import pg from "pg";
import { formatSnapshot } from "../inspect/format.js";
import { type InspectFilters, type Snapshot, takeSnapshot } from "../inspect/snapshot.js";
import { describeTarget, type Output } from "./io.js";

/** Exit codes of `holdfast inspect` (docs/observability.md, Inspect). */
export const inspectExit = { healthy: 0, unhealthy: 1, unreachable: 2 } as const;

export interface InspectCommandOptions extends InspectFilters {
  database: string;
  json?: boolean;
  /** Redraw every this many seconds until SIGINT/SIGTERM. */
  watchSeconds?: number | undefined;
  /** Table width (default: the terminal's, at least 80; 80 when not a terminal). */
  width?: number | undefined;
}

/** A failure to read the snapshot, with the message an operator needs. */
class Unreachable extends Error {}

/** Runs the inspector; resolves with the exit code (the last snapshot's, in watch mode). */
export async function runInspect(opts: InspectCommandOptions, io: Output): Promise<number> {
  const width = opts.width ?? Math.max(80, io.columns ?? 80);
  const filters = { key: opts.key, kind: opts.kind };
  let client: pg.Client | undefined;
  const once = async (): Promise<Snapshot> => {
    if (!client) {
      const c = new pg.Client({
        connectionString: opts.database,
        application_name: "holdfast:inspect",
        connectionTimeoutMillis: 5_000,
        // Client-side: a startup statement_timeout is refused by PgBouncer (and others).
        query_timeout: 10_000,
      });
      c.on("error", () => {}); // a dropped connection surfaces on the next query
      try {
        await c.connect();
      } catch (err) {
        await c.end().catch(() => {});
        throw new Unreachable(
          `cannot connect to Postgres at ${describeTarget(opts.database)}: ${reason(err)}`,
        );
      }
      client = c;
    }
    try {
      return await takeSnapshot(client, filters);
    } catch (err) {
      const c = client;
      client = undefined;
      await c.end().catch(() => {});
      throw new Unreachable(explain(err, opts.database));
    }
  };
  const render = (s: Snapshot): string =>
    opts.json
      ? `${JSON.stringify(s, null, opts.watchSeconds ? 0 : 2)}\n`
      : formatSnapshot(s, width);
  const codeOf = (s: Snapshot) => (s.healthy ? inspectExit.healthy : inspectExit.unhealthy);

  try {
    if (opts.watchSeconds === undefined) {
      const s = await once().catch((err: unknown) => {
        if (err instanceof Unreachable) {
          io.stderr.write(`holdfast inspect: ${err.message}\n`);
          return undefined;
        }
        throw err;
      });
      if (!s) return inspectExit.unreachable;
      io.stdout.write(render(s));
      return codeOf(s);
    }
    return await watch(opts.watchSeconds, once, render, codeOf, io);
  } finally {
    await client?.end().catch(() => {});
  }
}

async function watch(
  seconds: number,
  once: () => Promise<Snapshot>,
  render: (s: Snapshot) => string,
  codeOf: (s: Snapshot) => number,
  io: Output,
): Promise<number> {
  let code: number = inspectExit.healthy;
  let stop: () => void = () => {};
  const stopped = new Promise<void>((resolve) => {
    stop = resolve;
  });
  const onSignal = () => stop();
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  // Clear and redraw in a terminal; elsewhere (a pipe, --json) append one frame per tick.
  const redraw = io.isTTY === true;
  try {
    for (;;) {
      let frame: string;
      try {
        const s = await once();
        code = codeOf(s);
        frame = render(s);
      } catch (err) {
        if (!(err instanceof Unreachable)) throw err;
        code = inspectExit.unreachable;
        frame = `holdfast inspect: ${err.message} (retrying every ${seconds}s)\n`;
      }
      io.stdout.write(redraw ? `\x1b[H\x1b[2J${frame}` : frame);
      let timer: NodeJS.Timeout | undefined;
      const tick = new Promise<"tick">((r) => {
        timer = setTimeout(() => r("tick"), seconds * 1000);
      });
      const woke = await Promise.race([tick, stopped.then(() => "stop" as const)]);
      clearTimeout(timer);
      if (woke === "stop") return code;
    }
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

function reason(err: unknown): string {
  if (err instanceof AggregateError && err.errors.length > 0) return reason(err.errors[0]);
  const code = (err as { code?: unknown }).code;
  const message = err instanceof Error ? err.message : String(err);
  return typeof code === "string" && !message.includes(code) ? `${code} ${message}` : message;
}

/** Turns a query error into what to do about it (by SQLSTATE, never by message text). */
function explain(err: unknown, url: string): string {
  const code = (err as { code?: unknown }).code;
  const where = describeTarget(url);
  if (code === "3F000" || code === "42P01")
    return `no holdfast schema in ${where}: run \`holdfast migrate\` first`;
  if (code === "42501")
    return `permission denied in ${where} (${reason(err)}): grant SELECT on the relations listed in docs/observability.md (or the holdfast_observer role)`;
  return `cannot read from ${where}: ${reason(err)}`;
}
