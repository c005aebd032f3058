// A Postgres restart with tasks running, on a private server this file can stop and start.
// Every lock session ends at once; workers must recover on their own, without a restart.
import pg from "pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Holdfast, LockLostError, type Task } from "../../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "../support/db.js";
import { type EmbeddedServer, startEmbedded } from "../support/postgres.js";
import { createRunsTable, overlaps, type RunRow, recordedRun } from "../support/runs.js";
import { until, waitEvent } from "./support.js";

let server: EmbeddedServer;
let db: TestDatabase;
let pool: pg.Pool;
let hf: Holdfast;

beforeAll(async () => {
  server = await startEmbedded();
  db = await freshDatabase({ adminUrl: server.url });
  await createRunsTable(db.pool);
  pool = new pg.Pool({ connectionString: db.url, max: 6 });
  pool.on("error", () => {});
  hf = new Holdfast({ pool, logger: silent });
}, 120_000);

afterAll(async () => {
  await hf?.close();
  await pool?.end();
  await db?.drop();
  await server?.stop();
});

it("after a Postgres restart with tasks running, every task ends exactly once and the same workers carry on", async () => {
  const workers = ["w1", "w2"].map((name) =>
    hf.worker({
      name,
      concurrency: 2,
      reconnectMaxDelayMs: 500,
      rescanIntervalMs: 60_000, // wake-ups after the restart must come from LISTEN
      handlers: {
        job: {
          handler: (task: Task<{ ms: number }>, ctx) => recordedRun(pool, task, ctx, name),
          maxAttempts: 5,
        },
      },
    }),
  );
  for (const w of workers) await w.start();
  const lostAborts: unknown[] = [];
  for (const w of workers)
    w.on("task:end", (_t, r) => r.outcome === "lost" && lostAborts.push(r.error));

  const started = workers.map((w) => waitEvent(w, "task:start"));
  const fourStarted = new Promise<void>((resolve) => {
    let n = 0;
    for (const w of workers) w.on("task:start", () => ++n === 4 && resolve());
  });
  const ids: number[] = [];
  for (let i = 0; i < 6; i++) {
    ids.push((await hf.enqueue("job", { key: `restart:${i}`, payload: { ms: 2_000 } })).id);
  }
  await Promise.all(started);
  await fourStarted;

  const lost = workers.map((w) => waitEvent(w, "lock:lost"));
  const reconnected = workers.map((w) => waitEvent(w, "lock:reconnected", () => true, 60_000));
  await server.halt();
  const haltedAt = Date.now();
  const errors = await Promise.all(lost);
  for (const [e] of errors) expect(e).toBeInstanceOf(LockLostError);
  // Down long enough for several failed reconnect attempts of both sessions.
  await new Promise((r) => setTimeout(r, 1_500));
  await server.start();
  const restartedAt = Date.now();
  await Promise.all(reconnected);
  const recoveredMs = Date.now() - restartedAt;

  const done = await until(
    async () => {
      const { rows } = await db.pool.query<{ n: number }>(
        "select count(*)::int as n from holdfast.tasks where state = 'succeeded'",
      );
      return rows[0]?.n === ids.length ? Date.now() : undefined;
    },
    60_000,
    "every task succeeded",
    100,
  );
  console.log(
    `restart: lock sessions back ${recoveredMs} ms after the server; all tasks done ${done - restartedAt} ms after it`,
  );
  expect(lostAborts.length).toBeGreaterThanOrEqual(4);

  // Exactly one succeeded attempt per task; the runs cut by the restart are recorded as lost.
  const { rows: attempts } = await db.pool.query<{ task_id: string; outcome: string | null }>(
    "select task_id, outcome from holdfast.attempts order by task_id, attempt",
  );
  for (const id of ids) {
    const mine = attempts.filter((a) => Number(a.task_id) === id);
    expect(mine.filter((a) => a.outcome === "succeeded")).toHaveLength(1);
    expect(mine.every((a) => a.outcome === "succeeded" || a.outcome === "lost")).toBe(true);
  }
  expect(attempts.filter((a) => a.outcome === "lost").length).toBeGreaterThanOrEqual(4);
  const { rows: runs } = await db.pool.query<RunRow>("select * from runs");
  expect(overlaps(runs, () => haltedAt)).toEqual([]);

  // LISTEN recovered too: a new task wakes an idle worker long before the 60 s rescan.
  const woke = Promise.race(workers.map((w) => waitEvent(w, "task:start", () => true, 10_000)));
  const enqueuedAt = Date.now();
  await hf.enqueue("job", { key: "restart:after", payload: { ms: 1 } });
  await woke;
  expect(Date.now() - enqueuedAt).toBeLessThan(5_000);

  // Failed reconnect attempts left nothing behind: one lock and one LISTEN session per worker.
  const { rows: sessions } = await db.pool.query<{ app: string; n: number }>(
    `select application_name as app, count(*)::int as n from pg_stat_activity
     where application_name like 'holdfast:%' and datname = current_database()
     group by 1 order by 1`,
  );
  expect(sessions).toEqual(
    ["lock", "listen"]
      .flatMap((s) => ["w1", "w2"].map((w) => ({ app: `holdfast:${s}:${w}`, n: 1 })))
      .sort((a, b) => a.app.localeCompare(b.app)),
  );
});
