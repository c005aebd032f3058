import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Holdfast, type Worker } from "../src/index.js";
import { HoldfastMetrics } from "../src/metrics.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";
import { useWorkerProcesses } from "./support/processes.js";
import { until } from "./support/wait.js";

type Pruned = { tasks: number; attempts: number; keys: number; keyKinds: number };

async function count(db: TestDatabase, sql: string): Promise<number> {
  const { rows } = await db.pool.query<{ n: number }>(`select (${sql})::int as n`);
  return rows[0]?.n ?? -1;
}

describe("pruning, a duty of the sweep leader", () => {
  let db: TestDatabase;
  let hf: Holdfast;
  const workers: Worker[] = [];
  beforeAll(async () => {
    db = await freshDatabase();
    hf = new Holdfast({ connectionString: db.url, logger: silent });
  });
  afterAll(async () => {
    await Promise.all(workers.map((w) => w.stop()));
    await hf.close();
    await db.drop();
  });

  it("the leader prunes in batches, counts rows per table, and leaves unexpired work", async () => {
    await hf.defineKind("gone", { retention: { succeeded: 1 } });
    await hf.defineKind("kept"); // 1 day
    const metrics = new HoldfastMetrics(undefined);
    const worker = hf.worker({
      handlers: { gone: async () => {}, kept: async () => {} },
      concurrency: 4,
      pruneBatchSize: 7,
      pruneIntervalMs: 100,
    });
    workers.push(worker);
    metrics.observe(worker);
    const batches: Pruned[] = [];
    worker.on("pruned", (p) => batches.push(p));
    let ended = 0;
    worker.on("task:end", () => ended++);
    for (let i = 0; i < 30; i++) await hf.enqueue("gone", { key: `g:${i}` });
    for (let i = 0; i < 5; i++) await hf.enqueue("kept", { key: `k:${i}` });
    await worker.start();
    await until(() => ended === 35, 20_000, "35 tasks ended");
    await until(
      async () =>
        (await count(db, "select count(*) from holdfast.tasks where kind = 'gone'")) === 0 &&
        (await count(db, "select count(*) from holdfast.keys where key like 'g:%'")) === 0,
      20_000,
      "the expired tasks and their keys pruned",
    );
    expect(batches.reduce((n, b) => n + b.tasks, 0)).toBe(30);
    expect(Math.max(...batches.map((b) => b.tasks))).toBeLessThanOrEqual(7);
    expect(batches.reduce((n, b) => n + b.attempts, 0)).toBe(30);
    expect(await count(db, "select count(*) from holdfast.tasks where kind = 'kept'")).toBe(5);
    expect(await metrics.text()).toMatch(/holdfast_pruned_rows_total\{table="tasks"\} 30/);
    expect(await metrics.text()).toMatch(/holdfast_pruned_rows_total\{table="keys"\} 30/);
  });

  it("the quiet leader's deadline covers the next prune, and a quiet leader still prunes", async () => {
    const retentionMs = 1_500;
    await hf.defineKind("soon", { retention: { succeeded: retentionMs } });
    await hf.defineKind("daily"); // successes kept 1 day
    await Promise.all(workers.map((w) => w.stop()));
    const worker = hf.worker({
      handlers: { soon: async () => {}, daily: async () => {} },
      pruneIntervalMs: 100,
    });
    workers.push(worker);
    const quiet: Array<{ until: Date | null; leader: boolean; at: number }> = [];
    worker.on("quiet", (q) => quiet.push({ ...q, at: Date.now() }));
    const pruned: Pruned[] = [];
    worker.on("pruned", (p) => pruned.push(p));
    const ended: string[] = [];
    worker.on("task:end", (t) => ended.push(t.kind));
    await worker.start();
    await hf.enqueue("daily", { key: "d:1" });
    await until(() => ended.includes("daily"), 20_000, "the daily task ended");
    // The earliest retention to end: the daily task's (or an earlier test's, also 1 day).
    const { rows } = await db.pool.query<{ at: Date; daily: boolean }>(
      `select holdfast.prune_due() as at, holdfast.prune_due() <= (
         select finished_at + interval '1 day' from holdfast.tasks where key = 'd:1') as daily`,
    );
    expect(rows[0]?.daily).toBe(true);
    expect(rows[0]?.at.getTime()).toBeGreaterThan(Date.now() + 23 * 3_600_000);
    // Nothing else to do: quiet until that retention ends (the event's deadline is the
    // server's, carried as ms from now: within a second of it).
    const due = rows[0]?.at.getTime() ?? 0;
    const q1 = await until(
      () => quiet.find((q) => q.leader && Math.abs((q.until?.getTime() ?? 0) - due) < 1_000),
      20_000,
      "the leader quiet until the next prune",
    );

    await hf.enqueue("soon", { key: "s:1" });
    await until(() => ended.includes("soon"), 20_000, "the soon task ended");
    // Quiet again, and no longer than a minute: the finished task expires in 1.5 s, and the
    // leader wakes for pruning at most once a minute.
    const q2 = await until(
      () => quiet.find((q) => q.leader && q.at > q1.at),
      20_000,
      "the leader quiet again",
    );
    expect(q2.until?.getTime()).toBeLessThanOrEqual(q2.at + 61_000);
    // The quiet leader prunes when the retention ends (its own timer, no sweep needed).
    await until(() => pruned.some((p) => p.tasks === 1), 20_000, "the quiet leader pruned");
    expect(await count(db, "select count(*) from holdfast.tasks where kind = 'soon'")).toBe(0);
    expect(await count(db, "select count(*) from holdfast.tasks where kind = 'daily'")).toBe(1);
  });
});

describe("a leader SIGKILLed mid-prune", () => {
  const procs = useWorkerProcesses();
  const n = 40_000;

  it("leaves no task half-deleted, and the next leader finishes the work", async () => {
    const db = procs.db;
    // History: n finished tasks of kind job, two attempts each, ended two days ago (kind job
    // keeps successes for the default 1 day).
    const hf = new Holdfast({ connectionString: db.url, logger: silent });
    await hf.defineKind("job");
    await hf.close();
    await db.pool.query(
      `insert into holdfast.keys (key, lock_id)
       select 'h:' || i, holdfast.lock_id('h:' || i) from generate_series(1, ${n}) i`,
    );
    await db.pool.query(
      `insert into holdfast.tasks (kind, key, state, attempt, max_attempts, fence, started_at, finished_at)
       select 'job', 'h:' || i, 'succeeded', 2, 5, i, now() - interval '2 days', now() - interval '2 days'
       from generate_series(1, ${n}) i`,
    );
    await db.pool.query(
      `insert into holdfast.attempts (task_id, attempt, fence, started_at, finished_at, outcome)
       select t.id, a, t.fence, t.started_at, t.finished_at, case a when 1 then 'failed' else 'succeeded' end
       from holdfast.tasks t, generate_series(1, 2) a`,
    );
    await db.pool.query("analyze");

    const leader = await procs.start("a", { HF_PRUNE_BATCH: String(n / 2) });
    // The batch's statement is running on the leader's lock session: kill the process.
    await until(
      async () =>
        (await count(
          db,
          "select count(*) from pg_stat_activity where state = 'active' and query like '%prune_rows%'",
        )) > 0,
      60_000,
      "a prune batch in flight",
      5,
    );
    await leader.kill("SIGKILL");

    // Whatever that batch did, it did whole: every task left has both its attempts.
    const half = await count(
      db,
      `select count(*) from holdfast.tasks t
       where (select count(*) from holdfast.attempts a where a.task_id = t.id) <> 2`,
    );
    expect(half).toBe(0);
    expect(
      await count(
        db,
        "select count(*) from holdfast.attempts a where not exists (select 1 from holdfast.tasks t where t.id = a.task_id)",
      ),
    ).toBe(0);

    const next = await procs.start("b", { HF_PRUNE_BATCH: "5000" });
    await next.waitFor((e) => e.event === "leader", 30_000);
    await until(
      async () => (await count(db, "select count(*) from holdfast.tasks")) === 0,
      120_000,
      "the next leader pruned the rest",
    );
    expect(await count(db, "select count(*) from holdfast.attempts")).toBe(0);
    await until(async () => (await count(db, "select count(*) from holdfast.keys")) === 0);
  });
});

describe("a leader SIGKILLed while quiet with a prune due", () => {
  const procs = useWorkerProcesses();

  it("a follower leads by the quiet deadline and prunes", async () => {
    const db = procs.db;
    const hf = new Holdfast({ pool: db.pool, logger: silent });
    // Long enough that the leader, pruning one retention after the task ran, is killed first.
    await hf.defineKind("job", { retention: { succeeded: 20_000 } });
    const a = await procs.start("a");
    const b = await procs.start("b");
    const [leader, follower] = a.events.some((e) => e.event === "leader") ? [a, b] : [b, a];
    await leader.waitFor((e) => e.event === "leader", 15_000);
    await hf.enqueue("job", { key: "q:1", payload: { ms: 0 } });
    await until(
      async () =>
        (await count(db, "select count(*) from holdfast.tasks where state = 'succeeded'")) === 1,
      15_000,
      "the task succeeded",
    );
    const since = Date.now();
    // Quiet, advertising the prune due in 20 s (no sooner than a minute ahead): the deadline a
    // follower trusts. The leader dies before its own timer prunes (20 s after the task ran).
    const quiet = await leader.waitFor(
      (e) => e.event === "quiet" && e.leader === true && e.at >= since,
      15_000,
    );
    expect(quiet.until).not.toBeNull();
    expect(Number(quiet.until)).toBeLessThanOrEqual(Date.now() + 61_000);
    await leader.kill("SIGKILL");
    await follower.waitFor((e) => e.event === "leader", 90_000);
    const pruned = await follower.waitFor((e) => e.event === "pruned", 30_000);
    expect(pruned.tasks).toBe(1);
    // Led within the follower's lateness bound (2 sweeps, + jitter) after the deadline.
    const led = follower.events.find((e) => e.event === "leader");
    expect(led?.at).toBeLessThanOrEqual(Number(quiet.until) + 2_000);
    expect(await count(db, "select count(*) from holdfast.tasks")).toBe(0);
    await hf.close();
  }, 120_000);
});
