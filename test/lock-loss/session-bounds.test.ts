// Every session a worker opens tells the server how soon to give up on a silent client: after a
// partition the worker opens new sessions, and the old backends must be freed by the server's
// TCP keepalives within seconds, not after the kernel's default of two hours. The server's own
// keepalive timer for each backend's socket is read from /proc/net/tcp (Linux, server on this
// machine: embedded Postgres or DATABASE_URL on localhost).
import { readFile } from "node:fs/promises";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Holdfast } from "../../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "../support/db.js";

let db: TestDatabase;

beforeAll(async () => {
  db = await freshDatabase();
});

afterAll(async () => {
  await db.drop();
});

/** USER_HZ: /proc/net/tcp reports timers in clock ticks of 1/100 s on Linux. */
const ticksPerSecond = 100;

/**
 * Seconds until the server's keepalive timer fires on the server end of the connection from
 * `clientPort` to `serverPort`; undefined when that socket is not visible here.
 */
async function serverKeepaliveIn(
  serverPort: number,
  clientPort: number,
): Promise<number | undefined> {
  const hex = (n: number) => n.toString(16).toUpperCase().padStart(4, "0");
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    const text = await readFile(file, "utf8").catch(() => "");
    for (const line of text.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      // local_address rem_address st tx:rx tr:tm->when ...
      if (f[1]?.endsWith(`:${hex(serverPort)}`) && f[2]?.endsWith(`:${hex(clientPort)}`)) {
        const [timer, when] = (f[5] ?? "").split(":");
        if (timer !== "02") return Number.POSITIVE_INFINITY; // no keepalive timer running now
        return Number.parseInt(when ?? "", 16) / ticksPerSecond;
      }
    }
  }
  return undefined;
}

it("the server probes a worker's lock and LISTEN sessions after tcpKeepalivesIdleSec of silence", async (ctx) => {
  const hf = new Holdfast({ pool: db.pool, logger: silent });
  const w = hf.worker({
    name: "bounded",
    sweepIntervalMs: 60_000,
    lockSession: { tcpKeepalivesIdleSec: 7 },
    handlers: { job: async () => {} },
  });
  await w.start();
  try {
    const { rows } = await db.pool.query<{ app: string; port: number; server_port: number }>(
      `select application_name as app, client_port as port, inet_server_port() as server_port
       from pg_stat_activity
       where application_name like 'holdfast:%:bounded' and datname = current_database()
       order by 1`,
    );
    expect(rows.map((r) => r.app)).toEqual(["holdfast:listen:bounded", "holdfast:lock:bounded"]);
    // A socket with data in flight (a health check just sent) shows its retransmit timer, not
    // the keepalive one: sample each until it is idle, for a few seconds at most.
    const keepaliveOf = async (r: (typeof rows)[number]) => {
      let seconds = await serverKeepaliveIn(r.server_port, r.port);
      for (let i = 0; i < 30 && seconds === Number.POSITIVE_INFINITY; i++) {
        await new Promise((res) => setTimeout(res, 100));
        seconds = await serverKeepaliveIn(r.server_port, r.port);
      }
      return seconds;
    };
    const timers = await Promise.all(rows.map(async (r) => [r.app, await keepaliveOf(r)] as const));
    if (timers.some(([, s]) => s === undefined)) ctx.skip(); // the server runs elsewhere
    for (const [app, seconds] of timers) {
      expect({ app, bounded: (seconds ?? Number.POSITIVE_INFINITY) <= 7 }).toEqual({
        app,
        bounded: true,
      });
    }
  } finally {
    await w.stop();
  }
});
