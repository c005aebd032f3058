// Lock loss by pg_terminate_backend of the lock session: the abort is driven by the
// connection's end, not by the next health check, and the task is taken over as attempt 2.
import { afterAll, beforeAll, expect, it } from "vitest";
import { Holdfast, LockLostError, type Task } from "../../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "../support/db.js";
import { aborted, lockHolder, type RunLog, until, waitEvent } from "./support.js";

let db: TestDatabase;
let hf: Holdfast;

beforeAll(async () => {
  db = await freshDatabase();
  hf = new Holdfast({ pool: db.pool, logger: silent });
});

afterAll(async () => {
  await hf.close();
  await db.drop();
});

it("pg_terminate_backend of the lock session aborts the handler at once; the task is taken over as attempt 2 without overlap", async () => {
  const runs: RunLog[] = [];
  const handler = (worker: string) => async (task: Task, ctx: { signal: AbortSignal }) => {
    const run: RunLog = { worker, task, startedAt: Date.now() };
    runs.push(run);
    if (task.attempt > 1) return;
    run.abortedAt = await aborted(ctx.signal);
    run.abortReason = ctx.signal.reason;
    run.endedAt = Date.now();
  };
  // Probes only after 5 s of silence, no sweeps: an abort within a second comes from the event.
  const a = hf.worker({
    name: "a",
    sweepIntervalMs: 60_000,
    lockSession: { healthCheckIntervalMs: 5_000, healthCheckTimeoutMs: 2_000 },
    handlers: { job: handler("a") },
  });
  await a.start();
  const { id } = await hf.enqueue("job", { key: "representation:ws:s1:bob" });
  const [first] = await waitEvent(a, "task:start", (t) => t.id === id);
  const b = hf.worker({ name: "b", handlers: { job: handler("b") } });
  await b.start();

  const pid = await lockHolder(db.pool, first.key);
  expect(pid).toBeTypeOf("number");
  const reconnected = waitEvent(a, "lock:reconnected");
  const second = Promise.race([a, b].map((w) => waitEvent(w, "task:start", (t) => t.id === id)));
  const terminatedAt = Date.now();
  await db.pool.query("select pg_terminate_backend($1)", [pid]);

  const [next] = await second;
  const runA = runs.find((r) => r.task.id === id && r.task.attempt === 1);
  const runNext = runs.find((r) => r.task.id === id && r.task.attempt === 2);
  const abortMs = (runA?.abortedAt ?? Number.POSITIVE_INFINITY) - terminatedAt;
  console.log(
    `terminate: handler aborted after ${abortMs} ms; attempt 2 started after ${(runNext?.startedAt ?? 0) - terminatedAt} ms`,
  );
  expect(runA?.abortReason).toBeInstanceOf(LockLostError);
  expect(abortMs).toBeLessThan(1_000);
  expect(next.attempt).toBe(2);
  expect(next.fence).toBeGreaterThan(first.fence);
  expect(runNext?.startedAt).toBeGreaterThanOrEqual(runA?.endedAt ?? Number.POSITIVE_INFINITY);
  await reconnected; // the same worker object recovers its lock session

  await until(
    async () => {
      const { rows } = await db.pool.query("select state from holdfast.tasks where id = $1", [id]);
      return rows[0]?.state === "succeeded";
    },
    10_000,
    "task succeeded",
  );
  const { rows: attempts } = await db.pool.query(
    "select attempt, outcome from holdfast.attempts where task_id = $1 order by attempt",
    [id],
  );
  expect(attempts).toEqual([
    { attempt: 1, outcome: "lost" },
    { attempt: 2, outcome: "succeeded" },
  ]);
});
