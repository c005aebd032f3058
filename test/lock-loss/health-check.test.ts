// The lock session's health check runs every second on every worker process: it must prove
// the session alive without costing the server a transaction each time (a fleet of idle
// workers would otherwise spend one transaction per process per second doing nothing).
import pg from "pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { LockSession, lockSessionDefaults } from "../../src/worker/lock-session.js";
import { freshDatabase, type TestDatabase } from "../support/db.js";
import { until } from "./support.js";

let db: TestDatabase;

beforeAll(async () => {
  db = await freshDatabase();
});

afterAll(async () => {
  await db.drop();
});

/** Transactions the database has counted so far (backends flush theirs when idle or ending). */
async function transactions(url: string): Promise<number> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    const { rows } = await c.query<{ n: string }>(
      `select xact_commit + xact_rollback as n from pg_stat_database
       where datname = current_database()`,
    );
    return Number(rows[0]?.n);
  } finally {
    await c.end();
  }
}

it("health checks of a quiet lock session start no transaction, and a query after them gets its own answer", async () => {
  const session = new LockSession({ connectionString: db.url }, "holdfast:lock:probe", {
    ...lockSessionDefaults,
    healthCheckIntervalMs: 20,
    healthCheckTimeoutMs: 1_000,
  });
  let lost: unknown;
  session.on("lost", (err) => {
    lost = err;
  });
  await session.connect();
  const pid = await session.pid;
  const before = await transactions(db.url);
  // Forty answered health checks on a session that runs nothing else.
  const answers: number[] = [];
  await until(
    () => {
      if (answers.at(-1) !== session.lastAnswerAt) answers.push(session.lastAnswerAt);
      return answers.length > 40;
    },
    20_000,
    "40 health checks",
    5,
  );
  // The protocol stays in step: a query after the probes is answered with its own rows.
  expect(await session.query<{ x: number }>("select 42 as x")).toEqual([{ x: 42 }]);
  await session.close();
  // A backend flushes its statistics when it exits.
  await until(
    async () =>
      (await db.pool.query("select 1 from pg_stat_activity where pid = $1", [pid])).rowCount === 0,
  );
  const spent = (await transactions(db.url)) - before;
  // The query above, our two reads and the pool's check: well under one per health check.
  expect(spent).toBeLessThan(10);
  expect(lost).toBeUndefined();
});
