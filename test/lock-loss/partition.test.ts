// Lock loss by a network partition: the worker reaches Postgres through a TCP proxy that stops
// forwarding without FIN or RST. The handler must be aborted before the server frees the lock.
import pg from "pg";
import { afterAll, beforeAll, expect, inject, it } from "vitest";
import { Holdfast, LockLostError } from "../../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "../support/db.js";
import { startProxy, type TcpProxy } from "../support/tcp-proxy.js";
import {
  aborted,
  fastLockSession as fast,
  lockHolder,
  type RunLog,
  until,
  waitEvent,
} from "./support.js";

let db: TestDatabase;
let proxy: TcpProxy;
const cleanup: Array<() => Promise<unknown>> = [];

// idle_session_timeout, what frees the lock behind the proxy here, exists from PostgreSQL 14 on;
// 13 ignores idleSessionTimeoutMs (the lock stays held until the partition heals).
const noIdleSessionTimeout = inject("serverMajor") < 14;
const skipNote = "PostgreSQL 13 has no idle_session_timeout";

beforeAll(async () => {
  db = await freshDatabase();
  proxy = await startProxy(db.url);
});

afterAll(async () => {
  for (const f of cleanup.reverse()) await f().catch(() => {});
  await proxy.close();
  await db.drop();
});

it("a partitioned worker aborts its handler before the server frees the lock; the takeover starts only after; its late complete is rejected", async ({
  skip,
}) => {
  skip(noIdleSessionTimeout, skipNote);
  const runs: RunLog[] = [];
  const handler =
    (worker: string) => async (task: RunLog["task"], ctx: { signal: AbortSignal }) => {
      const run: RunLog = { worker, task, startedAt: Date.now() };
      runs.push(run);
      if (worker === "b") return; // the takeover finishes at once
      run.abortedAt = await aborted(ctx.signal);
      run.abortReason = ctx.signal.reason;
      run.endedAt = Date.now();
    };

  // Worker a reaches Postgres only through the proxy (lock, LISTEN and pool connections).
  const poolA = new pg.Pool({
    connectionString: proxy.url,
    max: 2,
    connectionTimeoutMillis: 2_000,
  });
  poolA.on("error", () => {});
  const hfA = new Holdfast({ pool: poolA, logger: silent });
  const a = hfA.worker({ name: "a", lockSession: fast, handlers: { job: handler("a") } });
  await a.start();
  cleanup.push(async () => {
    proxy.heal();
    await hfA.close();
    await poolA.end();
  });

  const hf = new Holdfast({ pool: db.pool, logger: silent });
  const { id } = await hf.enqueue("job", { key: "dream:ws:alice:alice" });
  const [first] = await waitEvent(a, "task:start", (t) => t.id === id);
  const holderA = await lockHolder(db.pool, first.key);
  expect(holderA).toBeTypeOf("number");

  // Worker b connects directly and is ready to take the key as soon as the server frees it.
  const b = hf.worker({ name: "b", handlers: { job: handler("b") } });
  await b.start();
  cleanup.push(() => b.stop());
  const takeover = waitEvent(b, "task:start", (t) => t.id === id, 20_000);
  const lost = waitEvent(a, "lock:lost");

  const partitionedAt = Date.now();
  proxy.partition();

  // Watch the server side from a direct connection: when is a's lock freed?
  let lastHeldAt = 0; // a poll issued at this time still saw a's backend holding the lock
  let releasedAt = 0;
  while (Date.now() - partitionedAt < 20_000) {
    const polledAt = Date.now();
    const holder = await lockHolder(db.pool, first.key);
    if (holder === holderA) lastHeldAt = polledAt;
    else {
      releasedAt = Date.now();
      break;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  expect(releasedAt).toBeGreaterThan(0);
  const [lockLost] = await lost;
  expect(lockLost).toBeInstanceOf(LockLostError);

  const runA = runs.find((r) => r.worker === "a" && r.task.id === id);
  expect(runA?.abortReason).toBeInstanceOf(LockLostError);
  const abortedAt = runA?.abortedAt ?? Number.POSITIVE_INFINITY;
  // Aborted while the server still held a's lock: nobody else could have started yet.
  expect(abortedAt).toBeLessThan(lastHeldAt);

  const [second] = await takeover;
  const runB = runs.find((r) => r.worker === "b" && r.task.id === id);
  expect(second.attempt).toBe(2);
  expect(second.fence).toBeGreaterThan(first.fence);
  expect(runB?.startedAt).toBeGreaterThan(lastHeldAt);
  expect(runB?.startedAt).toBeGreaterThan(runA?.endedAt ?? Number.POSITIVE_INFINITY); // no overlap

  console.log(
    `partition: handler aborted after ${abortedAt - partitionedAt} ms; server freed the lock after ` +
      `${releasedAt - partitionedAt} ms (last seen held at ${lastHeldAt - partitionedAt} ms); ` +
      `takeover started after ${(runB?.startedAt ?? 0) - partitionedAt} ms`,
  );

  // a's late report, with its old fence, changes nothing.
  await waitEvent(b, "task:end", (t) => t.id === id);
  const { rows: late } = await db.pool.query<{ ok: boolean }>(
    "select holdfast.complete($1, $2) as ok",
    [id, first.fence],
  );
  expect(late[0]?.ok).toBe(false);
  const { rows: attempts } = await db.pool.query(
    "select attempt, outcome, worker from holdfast.attempts where task_id = $1 order by attempt",
    [id],
  );
  expect(attempts).toEqual([
    expect.objectContaining({ attempt: 1, outcome: "lost", worker: "a" }),
    expect.objectContaining({ attempt: 2, outcome: "succeeded", worker: "b" }),
  ]);

  // After the partition heals, the same worker reconnects by itself, and once the server's
  // bound has passed it has one lock and one LISTEN backend: the ones it abandoned are gone.
  const back = waitEvent(a, "lock:reconnected", () => true, 20_000);
  proxy.heal();
  await back;
  const sessions = async () =>
    (
      await db.pool.query<{ app: string; n: number }>(
        `select application_name as app, count(*)::int as n from pg_stat_activity
         where application_name like 'holdfast:%:a' and datname = current_database()
         group by 1 order by 1`,
      )
    ).rows;
  await until(
    async () => {
      const s = await sessions();
      return s.length === 2 && s.every((r) => r.n === 1);
    },
    fast.tcpUserTimeoutMs ?? 3_000,
    "one lock and one LISTEN backend for worker a",
    100,
  );
  expect(await sessions()).toEqual([
    { app: "holdfast:listen:a", n: 1 },
    { app: "holdfast:lock:a", n: 1 },
  ]);
});

it("a quiet lock session is kept alive by its health check under a short idle_session_timeout", async ({
  skip,
}) => {
  skip(noIdleSessionTimeout, skipNote);
  const hf = new Holdfast({ pool: db.pool, logger: silent });
  const w = hf.worker({
    name: "quiet",
    sweepIntervalMs: 60_000,
    lockSession: {
      healthCheckIntervalMs: 200,
      healthCheckTimeoutMs: 300,
      idleSessionTimeoutMs: 1_500,
    },
    handlers: { job: async () => {} },
  });
  let lostCount = 0;
  w.on("lock:lost", () => lostCount++);
  await w.start();
  cleanup.push(() => w.stop());
  const pidOf = async () =>
    (
      await db.pool.query<{ pid: number }>(
        "select pid from pg_stat_activity where application_name = 'holdfast:lock:quiet'",
      )
    ).rows.map((r) => r.pid);
  const before = await pidOf();
  expect(before).toHaveLength(1);
  // Twice the server's idle limit with nothing to do: only the probes keep the session.
  await new Promise((r) => setTimeout(r, 3_000));
  expect(lostCount).toBe(0);
  expect(await pidOf()).toEqual(before);
});

it("a stalled event loop does not make a healthy lock session look lost", async () => {
  const hf = new Holdfast({ pool: db.pool, logger: silent });
  const w = hf.worker({
    name: "stalled",
    sweepIntervalMs: 60_000,
    lockSession: { healthCheckIntervalMs: 100, healthCheckTimeoutMs: 300 },
    handlers: { job: async () => {} },
  });
  let lostCount = 0;
  w.on("lock:lost", () => lostCount++);
  await w.start();
  cleanup.push(() => w.stop());
  // Busy loops longer than the deadline while probes are in flight: their answers arrive
  // during the stall and must be read before the deadline is judged.
  for (let i = 0; i < 5; i++) {
    const until = Date.now() + 600;
    while (Date.now() < until) {}
    await new Promise((r) => setTimeout(r, 50 + Math.random() * 100));
  }
  expect(lostCount).toBe(0);
});
