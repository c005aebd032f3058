// The LISTEN session behind a half-open connection: without the ping it would wait forever for
// an answer; the ping with a deadline destroys the socket, reconnects and re-LISTENs.
import { pino } from "pino";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Listener } from "../../src/worker/listener.js";
import { freshDatabase, type TestDatabase } from "../support/db.js";
import { startProxy, type TcpProxy } from "../support/tcp-proxy.js";
import { gate } from "./support.js";

let db: TestDatabase;
let proxy: TcpProxy;

beforeAll(async () => {
  db = await freshDatabase();
  proxy = await startProxy(db.url);
});

afterAll(async () => {
  await proxy.close();
  await db.drop();
});

it("a LISTEN session cut without FIN or RST reconnects after the cut heals and receives wake-ups again", async () => {
  const reconnected = gate();
  const unresponsive = gate();
  // The listener's own log says when it gave up the connection.
  const logger = pino(
    { level: "info" },
    {
      write: (line: string) => {
        if ((JSON.parse(line) as { event?: string }).event === "listen_unresponsive")
          unresponsive.open();
      },
    },
  );
  // pg warns (and pg@9 will fail) when a client is given a query while it runs another: the
  // re-LISTEN after a reconnect must send its statements one at a time.
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(`${w.name}: ${w.message}`);
  process.on("warning", onWarning);
  const woken: string[] = [];
  let wake = gate<string>();
  const listener = new Listener(
    { connectionString: proxy.url, connectionTimeoutMillis: 1_000 },
    "holdfast:listen:test",
    {
      wake: (kind) => {
        woken.push(kind);
        wake.open(kind);
      },
      cancel: () => {},
      reconnected: () => reconnected.open(),
      schedulesChanged: () => {},
      leader: () => {},
    },
    logger,
    { intervalMs: 200, timeoutMs: 500 },
  );
  await listener.start();
  try {
    await db.pool.query("select pg_notify('holdfast', 'before')");
    expect(await wake.promise).toBe("before");

    const cutAt = Date.now();
    proxy.partition();
    await db.pool.query("select pg_notify('holdfast', 'lost')"); // vanishes in the cut
    await unresponsive.promise; // its ping went unanswered: the socket is destroyed
    console.log(`LISTEN session given up ${Date.now() - cutAt} ms after the cut`);
    // Cut long enough for reconnect attempts to time out (connectionTimeoutMillis 1 s).
    await new Promise((r) => setTimeout(r, 2_500));
    const healedAt = Date.now();
    proxy.heal();
    await reconnected.promise;
    console.log(`LISTEN session back ${Date.now() - healedAt} ms after the cut healed`);

    wake = gate<string>();
    await db.pool.query("select pg_notify('holdfast', 'after')");
    expect(await wake.promise).toBe("after");
    expect(warnings.filter((w) => w.includes("already executing a query"))).toEqual([]);
    // The failed attempts left no second session behind (each would LISTEN and wake us too).
    await new Promise((r) => setTimeout(r, 1_000));
    const { rows } = await db.pool.query<{ n: number }>(
      "select count(*)::int as n from pg_stat_activity where application_name = 'holdfast:listen:test'",
    );
    expect(rows[0]?.n).toBe(1);
  } finally {
    process.off("warning", onWarning);
    await listener.close();
  }
});
