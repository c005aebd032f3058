import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { debianFile } from "./debian.js";
import { freePort } from "./postgres.js";

/** PgBouncer's pool modes: what one client connection keeps of a server session. */
export type PoolMode = "session" | "transaction" | "statement";

/** A PgBouncer in front of the test server, started by the tests. */
export interface Bouncer {
  mode: PoolMode;
  port: number;
  /** `url` with its host and port replaced by the bouncer's. */
  url(target: string): string;
  /** SIGKILLs the bouncer (every client and server connection of it drops). */
  kill(): Promise<void>;
  /** Starts it again on the same port, after kill(). */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

let resolved: { bin?: string; reason?: string } | undefined;

/** The pgbouncer binary (Debian package `pgbouncer`), or why there is none (see debianFile). */
export function pgbouncerBinary(): { bin?: string; reason?: string } {
  if (resolved) return resolved;
  const { path, reason } = debianFile(
    "pgbouncer",
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer"],
    () => {
      // The package enables a service on the default port; the tests start their own.
      try {
        execFileSync("service", ["pgbouncer", "stop"], { stdio: "ignore" });
      } catch {}
    },
  );
  resolved = path ? { bin: path } : { reason };
  return resolved;
}

async function listening(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, "127.0.0.1");
      s.once("connect", () => {
        s.destroy();
        resolve(true);
      });
      s.once("error", () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`pgbouncer did not listen on ${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Starts PgBouncer in `mode` in front of the server of `serverUrl` (any database: the
 * client's database name is passed through). Trust auth towards clients; the server's
 * password is in the config. PgBouncer refuses to run as root: as root it switches to
 * `nobody` (`-u`), and its temp dir is readable by that user.
 */
export async function startBouncer(serverUrl: string, mode: PoolMode): Promise<Bouncer> {
  const { bin, reason } = pgbouncerBinary();
  if (!bin) throw new Error(reason);
  const server = new URL(serverUrl);
  const dir = await mkdtemp(path.join(os.tmpdir(), "hf-bouncer-"));
  await chmod(dir, 0o777);
  const port = await freePort();
  const user = decodeURIComponent(server.username);
  const password = decodeURIComponent(server.password);
  const ini = path.join(dir, "pgbouncer.ini");
  await writeFile(path.join(dir, "users.txt"), `"${user}" ""\n`);
  await writeFile(
    ini,
    [
      "[databases]",
      `* = host=${server.hostname} port=${server.port} user=${user} password=${password}`,
      "[pgbouncer]",
      "listen_addr = 127.0.0.1",
      `listen_port = ${port}`,
      "unix_socket_dir =",
      "auth_type = trust",
      `auth_file = ${path.join(dir, "users.txt")}`,
      `pool_mode = ${mode}`,
      "max_client_conn = 1000",
      "default_pool_size = 200",
      `logfile = ${path.join(dir, "pgbouncer.log")}`,
      "log_connections = 0",
      "log_disconnections = 0",
      // node-pg sends no unsupported startup parameters; psql-like clients may send these.
      "ignore_startup_parameters = extra_float_digits,options",
      "",
    ].join("\n"),
  );
  for (const f of ["users.txt", "pgbouncer.ini"]) await chmod(path.join(dir, f), 0o644);
  const args = process.getuid?.() === 0 ? ["-u", "nobody", ini] : [ini];
  let child: ChildProcess | undefined;
  const launch = async () => {
    const c = spawn(bin, args, { stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    c.stderr?.on("data", (d: Buffer) => {
      err += d.toString();
    });
    child = c;
    try {
      await Promise.race([
        listening(port, 10_000),
        new Promise((_, reject) =>
          c.once("exit", async () => {
            const log = await readFile(path.join(dir, "pgbouncer.log"), "utf8").catch(() => "");
            reject(new Error(`pgbouncer exited: ${err}${log.slice(-2000)}`));
          }),
        ),
      ]);
    } catch (e) {
      c.kill("SIGKILL");
      throw e;
    }
  };
  const kill = async () => {
    const c = child;
    child = undefined;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => c.once("exit", () => resolve()));
    c.kill("SIGKILL");
    await exited;
  };
  await launch();
  return {
    mode,
    port,
    url: (target) => {
      const u = new URL(target);
      u.hostname = "127.0.0.1";
      u.port = String(port);
      return u.toString();
    },
    kill,
    restart: launch,
    stop: async () => {
      await kill();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
