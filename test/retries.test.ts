import pg from "pg";
import { expect, it } from "vitest";
import { useHoldfast } from "./support/db.js";
import { until } from "./support/wait.js";

const t = useHoldfast();

async function stateOf(id: number): Promise<string> {
  return (await t.db.pool.query("select state from holdfast.tasks where id = $1", [id])).rows[0]
    .state;
}

it("a failing task is retried with exponential backoff, then dead-lettered with its attempts history; SQL requeues it", async () => {
  const starts: number[] = [];
  let healthy = false;
  const worker = t.hf.worker({
    handlers: {
      flaky: {
        maxAttempts: 3,
        handler: async () => {
          starts.push(Date.now());
          if (!healthy) throw new Error(`boom ${starts.length}`);
        },
      },
    },
  });
  await worker.start();
  const { id } = await t.hf.enqueue("flaky", { key: "k:flaky", payload: { x: 1 } });
  await until(async () => ((await stateOf(id)) === "failed" ? true : undefined));

  // Backoff ~1 s then ~2 s, each with +-25 % jitter.
  expect(starts).toHaveLength(3);
  const gap1 = (starts[1] ?? 0) - (starts[0] ?? 0);
  const gap2 = (starts[2] ?? 0) - (starts[1] ?? 0);
  expect(gap1).toBeGreaterThanOrEqual(700);
  expect(gap1).toBeLessThan(1_250 + 700);
  expect(gap2).toBeGreaterThanOrEqual(1_450);
  expect(gap2).toBeLessThan(2_500 + 700);

  const [dead] = await t.hf.deadLetters({ kind: "flaky" });
  expect(dead).toMatchObject({ id, attempt: 3, maxAttempts: 3, payload: { x: 1 } });
  expect(dead?.attempts.map((a) => a.outcome)).toEqual(["failed", "failed", "failed"]);
  expect(dead?.attempts.map((a) => a.error?.message)).toEqual([
    "Error: boom 1",
    "Error: boom 2",
    "Error: boom 3",
  ]);
  expect(dead?.attempts[0]?.error?.stack).toContain("retries.test.ts");

  // Requeue from plain SQL: the task runs again as attempt 4 and its history is kept.
  healthy = true;
  const sqlClient = new pg.Client({ connectionString: t.db.url });
  await sqlClient.connect();
  const { rows } = await sqlClient.query("select holdfast.retry($1) as ok", [id]);
  expect(rows[0].ok).toBe(true);
  const again = await sqlClient.query("select holdfast.retry($1) as ok", [id]);
  expect(again.rows[0].ok).toBe(false); // pending now: nothing to requeue
  await sqlClient.end();
  await until(async () => ((await stateOf(id)) === "succeeded" ? true : undefined));
  const { rows: history } = await t.db.pool.query(
    "select attempt, outcome from holdfast.attempts where task_id = $1 order by attempt",
    [id],
  );
  expect(history.map((h) => h.outcome)).toEqual(["failed", "failed", "failed", "succeeded"]);
  expect(await t.hf.deadLetters({ kind: "flaky" })).toEqual([]);
  await worker.stop();
});

it("backoff is jittered: retries of the same attempt do not line up", async () => {
  const { rows } = await t.db.pool.query(
    "select extract(epoch from holdfast._backoff(3))::float8 as s from generate_series(1, 200)",
  );
  const secs = rows.map((r) => r.s as number);
  expect(Math.min(...secs)).toBeGreaterThanOrEqual(3);
  expect(Math.max(...secs)).toBeLessThanOrEqual(5);
  expect(new Set(secs.map((s) => s.toFixed(2))).size).toBeGreaterThan(50);
});

it("a task whose holder session dies on every attempt is dead-lettered after max attempts", async () => {
  // A sweeping worker of another kind; the crashing holder is a plain SQL session.
  const sweeper = t.hf.worker({ sweepIntervalMs: 50, handlers: { other: async () => {} } });
  await sweeper.start();
  await t.hf.defineKind("crashy");
  const { id } = await t.hf.enqueue("crashy", { key: "k:crash", maxAttempts: 3 });
  for (let attempt = 1; attempt <= 3; attempt++) {
    const c = new pg.Client({ connectionString: t.db.url });
    c.on("error", () => {}); // its termination below is the point
    await c.connect();
    const claimed = await until(async () => {
      const { rows } = await c.query("select * from holdfast.claim(array['crashy'], 'doomed')");
      return rows.length > 0 ? rows : undefined;
    });
    expect(claimed[0]).toMatchObject({ id: String(id), attempt });
    // The session ends without a report, as when the process is killed.
    await t.db.pool.query("select pg_terminate_backend(pid) from pg_stat_activity where pid = $1", [
      (c as unknown as { processID: number }).processID,
    ]);
    await c.end().catch(() => {});
    await until(async () => ((await stateOf(id)) !== "running" ? true : undefined));
  }
  expect(await stateOf(id)).toBe("failed");
  const { rows } = await t.db.pool.query(
    "select outcome from holdfast.attempts where task_id = $1 order by attempt",
    [id],
  );
  expect(rows.map((r) => r.outcome)).toEqual(["lost", "lost", "lost"]);
  await sweeper.stop();
});
