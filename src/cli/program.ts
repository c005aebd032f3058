import { InvalidArgumentError as ArgError, Command, Option } from "commander";
import type pg from "pg";
import { type Logger, pino } from "pino";
import { dashboardDefaults } from "../dashboard/server.js";
import {
  ConnectionError,
  HoldfastError,
  InvalidArgumentError,
  UnknownKindError,
} from "../errors.js";
import { Holdfast } from "../holdfast.js";
import { type MigrationPlan, planMigrations } from "../migrate.js";
import { runDashboard } from "./dashboard.js";
import { runInspect } from "./inspect.js";
import { databaseUrl, type Output, processOutput } from "./io.js";
import { runWorker } from "./worker.js";

/** `migrate --dry-run`: the plan, read on one of the pool's connections. */
async function plan(client: pg.PoolClient): Promise<MigrationPlan> {
  try {
    return await planMigrations(client);
  } finally {
    client.release();
  }
}

/** Exit codes of every command: 0 ok, 1 failed (or unhealthy for inspect), 2 cannot connect. */
export const exitCodes = { ok: 0, failed: 1, unreachable: 2 } as const;

const positiveInt = (value: string): number => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new ArgError("must be a positive integer");
  return n;
};
const taskId = positiveInt;
const integer = (value: string): number => {
  const n = Number(value);
  if (!Number.isInteger(n)) throw new ArgError("must be an integer");
  return n;
};
const port = (value: string): number => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new ArgError("must be a port (0-65535)");
  return n;
};
const seconds = (value: string): number => {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new ArgError("must be a positive number of seconds");
  return n;
};

const databaseOption = () =>
  new Option("-d, --database <url>", "Postgres connection string (default: $DATABASE_URL)");
const sessionUrlOption = () =>
  new Option(
    "--session-url <url>",
    "direct (or session-pooled) URL for the lock and LISTEN sessions and migrate, when --database goes through a transaction pooler (default: $HOLDFAST_SESSION_URL)",
  );

/** Builds the `holdfast` program; `exitCode()` is the code of the action that ran. */
export function buildProgram(io: Output = processOutput): {
  program: Command;
  exitCode: () => number;
} {
  let code: number = exitCodes.ok;
  const program = new Command("holdfast")
    .description("Per-key long-running tasks on Postgres session advisory locks")
    .showHelpAfterError()
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
    });

  const url = (opts: { database?: string }): string => {
    const u = databaseUrl(opts.database);
    if (u === undefined)
      throw new ConnectionError("holdfast: no database: pass --database <url> or set DATABASE_URL");
    return u;
  };
  const logger = (level?: string): Logger =>
    pino({ name: "holdfast", level: level ?? process.env.HOLDFAST_LOG_LEVEL ?? "info" });
  /** The session URL from --session-url or HOLDFAST_SESSION_URL, as a Holdfast option. */
  const sessionUrl = (opts: { sessionUrl?: string }): { sessionConnectionString?: string } => {
    const u = opts.sessionUrl ?? process.env.HOLDFAST_SESSION_URL;
    return u === undefined || u === "" ? {} : { sessionConnectionString: u };
  };
  /** Runs a command with a Holdfast client, closing it after. */
  const withClient = async <T>(
    opts: { database?: string; sessionUrl?: string },
    fn: (hf: Holdfast) => Promise<T>,
    log: Logger = logger("warn"),
  ): Promise<T> => {
    const hf = new Holdfast({ connectionString: url(opts), ...sessionUrl(opts), logger: log });
    try {
      return await fn(hf);
    } finally {
      await hf.close();
    }
  };
  const print = (value: unknown) => io.stdout.write(`${JSON.stringify(value)}\n`);

  program
    .command("migrate")
    .description("apply pending schema migrations (safe to run from many processes at once)")
    .addOption(databaseOption())
    .addOption(sessionUrlOption())
    .option(
      "--dry-run",
      "change nothing: print the package and schema versions and the pending migrations with what each locks",
    )
    .action(async (opts) => {
      if (opts.dryRun) print(await withClient(opts, (hf) => hf.pool.connect().then(plan)));
      else print(await withClient(opts, (hf) => hf.migrate()));
    });

  program
    .command("enqueue")
    .description("add a task; prints {id, deduped}")
    .argument("<kind>", "task kind")
    .argument("<key>", "exclusion key: at most one task of a key runs at a time")
    .option("--payload <json>", "JSON payload", "{}")
    .option("--run-at <iso>", "not before this time (ISO 8601)")
    .option("--priority <n>", "lower runs first", integer)
    .option("--dedupe-key <key>", "at most one pending task per dedupe key")
    .option("--max-attempts <n>", "attempts before dead letter", positiveInt)
    .option(
      "--debounce <interval>",
      "with --dedupe-key: start no earlier than this after the latest request (e.g. '10 minutes')",
    )
    .option("--max-wait <interval>", "with --debounce: never later than first request + this")
    .option("--define", "define the kind first if it does not exist (keeps existing settings)")
    .addOption(databaseOption())
    .action(async (kind: string, key: string, opts) => {
      let payload: unknown;
      try {
        payload = JSON.parse(opts.payload);
      } catch {
        throw new InvalidArgumentError(`holdfast: --payload is not valid JSON: ${opts.payload}`);
      }
      const runAt = opts.runAt === undefined ? undefined : new Date(opts.runAt);
      if (runAt && Number.isNaN(runAt.getTime()))
        throw new InvalidArgumentError(`holdfast: --run-at is not a date: ${opts.runAt}`);
      const result = await withClient(opts, async (hf) => {
        if (opts.define) await hf.defineKind(kind);
        return await hf.enqueue(kind, {
          key,
          payload,
          ...(runAt === undefined ? {} : { runAt }),
          ...(opts.priority === undefined ? {} : { priority: opts.priority }),
          ...(opts.dedupeKey === undefined ? {} : { dedupeKey: opts.dedupeKey }),
          ...(opts.maxAttempts === undefined ? {} : { maxAttempts: opts.maxAttempts }),
          ...(opts.debounce === undefined ? {} : { debounce: opts.debounce }),
          ...(opts.maxWait === undefined ? {} : { maxWait: opts.maxWait }),
        });
      });
      print(result);
    });

  program
    .command("worker")
    .description(
      "run handlers from a module; SIGTERM waits for running tasks, a second aborts them",
    )
    .requiredOption(
      "--handlers <module>",
      "module exporting `handlers` (or default): { kind: async (task, ctx) => {} }",
    )
    .option("-c, --concurrency <n>", "handlers running at once", positiveInt, 1)
    .option("--name <name>", "worker name recorded on its tasks (default host:pid:random)")
    .option(
      "--shutdown-timeout <seconds>",
      "after SIGTERM, abort handlers still running after this long",
      seconds,
    )
    .option(
      "--metrics-port <port>",
      "serve Prometheus metrics on http://0.0.0.0:<port>/metrics (0: any free port)",
      port,
    )
    .option("--log-level <level>", "pino level (default $HOLDFAST_LOG_LEVEL or info)")
    .addOption(databaseOption())
    .addOption(sessionUrlOption())
    .action(async (opts) => {
      const log = logger(opts.logLevel);
      const hf = new Holdfast({ connectionString: url(opts), ...sessionUrl(opts), logger: log });
      try {
        code = await runWorker(
          hf,
          {
            handlers: opts.handlers,
            concurrency: opts.concurrency,
            name: opts.name,
            shutdownTimeoutMs:
              opts.shutdownTimeout === undefined ? undefined : opts.shutdownTimeout * 1000,
            metricsPort: opts.metricsPort,
          },
          log,
        );
      } finally {
        await hf.close();
      }
    });

  program
    .command("inspect")
    .description(
      "who holds which key, waiters, orphans, queue and capacity; exit 0 healthy, 1 orphans or dead letters, 2 cannot connect",
    )
    .option("--json", "one JSON document (docs/inspect.schema.json); with --watch, one per line")
    .option("-w, --watch [seconds]", "redraw every N seconds (default 2)", seconds)
    .option("--key <key>", "only this key")
    .option("--kind <kind>", "only this kind")
    .option("--width <columns>", "table width (default: terminal width, at least 80)", positiveInt)
    .addOption(databaseOption())
    .action(async (opts) => {
      code = await runInspect(
        {
          database: url(opts),
          json: opts.json === true,
          watchSeconds: opts.watch === true ? 2 : opts.watch,
          key: opts.key,
          kind: opts.kind,
          width: opts.width,
        },
        io,
      );
    });

  program
    .command("dashboard")
    .description(
      "serve a web page of holders, orphans, queue, activity and dead letters (read-only unless --allow-actions)",
    )
    .option("-p, --port <port>", "port (0: any free port)", port, dashboardDefaults.port)
    .option(
      "--host <address>",
      "address to listen on; anything but loopback exposes the page to the network",
      dashboardDefaults.host,
    )
    .option(
      "--allow-actions",
      "offer retry and cancel, to browsers that present the token printed at start",
    )
    .option("--token <token>", "the actions token (default $HOLDFAST_DASHBOARD_TOKEN, else random)")
    .option("--refresh <seconds>", "how often an open page redraws (default 2)", seconds)
    .option("--log-level <level>", "pino level (default $HOLDFAST_LOG_LEVEL or info)")
    .addOption(databaseOption())
    .action(async (opts) => {
      const given: string | undefined = opts.token ?? process.env.HOLDFAST_DASHBOARD_TOKEN;
      const token = given === "" ? undefined : given;
      if (token !== undefined && !/^[A-Za-z0-9_-]{16,200}$/.test(token))
        throw new InvalidArgumentError(
          "holdfast: the dashboard token must be 16 to 200 characters of A-Z a-z 0-9 _ -",
        );
      code = await runDashboard(
        {
          database: url(opts),
          host: opts.host,
          port: opts.port,
          allowActions: opts.allowActions === true,
          token,
          refreshSeconds: opts.refresh,
        },
        io,
        logger(opts.logLevel),
      );
    });

  program
    .command("schedules")
    .description("list recurring schedules, one JSON object per line, with each next tick")
    .addOption(databaseOption())
    .action(async (opts) => {
      const schedules = await withClient(opts, (hf) => hf.schedules());
      for (const s of schedules) print(s);
    });

  program
    .command("unschedule")
    .description("remove a recurring schedule (tasks it enqueued stay)")
    .argument("<name>", "schedule name")
    .addOption(databaseOption())
    .action(async (name: string, opts) => {
      const removed = await withClient(opts, (hf) => hf.unschedule(name));
      print({ name, removed });
      if (!removed) code = exitCodes.failed;
    });

  program
    .command("retry")
    .description("requeue a dead-lettered or cancelled task (holdfast.retry)")
    .argument("<id>", "task id", taskId)
    .addOption(databaseOption())
    .action(async (id: number, opts) => {
      const ok = await withClient(opts, async (hf) => {
        try {
          // Whatever retry() returns, only an explicit false means "nothing to requeue".
          const { rows } = await hf.pool.query<{ ok: unknown }>("select holdfast.retry($1) as ok", [
            id,
          ]);
          return rows[0]?.ok !== false;
        } catch (err) {
          if ((err as { code?: unknown }).code === "42883")
            throw new HoldfastError(
              "HF_UNSUPPORTED",
              "holdfast: this database has no holdfast.retry(id): run `holdfast migrate` with a holdfast that has it",
            );
          throw err;
        }
      });
      print({ id, retried: ok });
      if (!ok) code = exitCodes.failed;
    });

  program
    .command("cancel")
    .description("cancel a task: a pending one never starts, a running one has its signal aborted")
    .argument("<id>", "task id", taskId)
    .addOption(databaseOption())
    .action(async (id: number, opts) => {
      const ok = await withClient(opts, (hf) => hf.cancel(id));
      print({ id, cancelled: ok });
      if (!ok) code = exitCodes.failed;
    });

  return { program, exitCode: () => code };
}

/** Runs the CLI with these arguments (without node and script); resolves with the exit code. */
export async function main(argv: string[], io: Output = processOutput): Promise<number> {
  const { program, exitCode } = buildProgram(io);
  program.exitOverride();
  try {
    await program.parseAsync(argv, { from: "user" });
    return exitCode();
  } catch (err) {
    const e = err as { code?: string; exitCode?: number };
    if (typeof e.code === "string" && e.code.startsWith("commander.")) {
      // help and version exit 0; usage errors were already printed by commander
      return e.exitCode ?? exitCodes.failed;
    }
    const message = err instanceof Error ? err.message : String(err);
    io.stderr.write(`${message.startsWith("holdfast") ? "" : "holdfast: "}${message}\n`);
    if (err instanceof UnknownKindError)
      io.stderr.write(
        "hint: start a worker for this kind once, or enqueue with --define to create it\n",
      );
    return err instanceof ConnectionError ? exitCodes.unreachable : exitCodes.failed;
  }
}
