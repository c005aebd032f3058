import pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Holdfast, type Task, type Worker } from "../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";
import { sleep, until } from "./support/wait.js";

let db: TestDatabase;
let hf: Holdfast;
const workers: Worker[] = [];

beforeAll(async () => {
  db = await freshDatabase();
  hf = new Holdfast({ pool: db.pool, logger: silent });
  await hf.defineKind("job");
});

afterEach(async () => {
  await Promise.all(workers.splice(0).map((w) => w.stop()));
});

afterAll(async () => {
  await db.drop();
});

function startedTask(
  w: Worker,
  pred: (t: Task) => boolean = () => true,
): Promise<{ task: Task; at: number }> {
  return new Promise((resolve) => {
    const on = (task: Task) => {
      if (!pred(task)) return;
      w.off("task:start", on);
      resolve({ task, at: performance.now() });
    };
    w.on("task:start", on);
  });
}

function ended(w: Worker, id: number): Promise<string> {
  return new Promise((resolve) => {
    const on = (task: Task, r: { outcome: string }) => {
      if (task.id !== id) return;
      w.off("task:end", on);
      resolve(r.outcome);
    };
    w.on("task:end", on);
  });
}

function newWorker(
  handler: (task: Task) => Promise<void> | void,
  opts: { concurrency?: number; rescanIntervalMs?: number } = {},
) {
  // A rescan interval of 10 minutes: only a notification (or a reconnect rescan) can explain a prompt start.
  const w = hf.worker({ handlers: { job: handler }, rescanIntervalMs: 600_000, ...opts });
  workers.push(w);
  return w;
}

describe("wake", () => {
  it("an idle worker starts a newly enqueued task without waiting for a poll", async () => {
    const w = newWorker(() => {});
    await w.start();
    await new Promise((r) => setTimeout(r, 200)); // idle: the first scan found nothing
    const started = startedTask(w);
    const t0 = performance.now();
    const { id } = await hf.enqueue("job", { key: "wake:1" });
    const { task, at } = await started;
    expect(task.id).toBe(id);
    const ms = at - t0;
    console.log(
      `wake (enqueue call to handler start, including the enqueue commit): ${ms.toFixed(2)} ms`,
    );
    expect(ms).toBeLessThan(1_000);
    expect(await ended(w, id)).toBe("succeeded");
  });

  it("a task enqueued while the worker starts still runs (LISTEN before the first scan)", async () => {
    const w = newWorker(() => {});
    const seen = new Set<number>();
    w.on("task:end", (t, r) => {
      if (r.outcome === "succeeded") seen.add(t.id);
    });
    const ids: number[] = [];
    const enqueueing = (async () => {
      for (let i = 0; i < 30; i++) ids.push((await hf.enqueue("job", { key: `startup:${i}` })).id);
    })();
    await Promise.all([w.start(), enqueueing]);
    await until(() => ids.every((id) => seen.has(id)), 10_000);
    expect(ids.every((id) => seen.has(id))).toBe(true);
  });

  it("a task enqueued while the LISTEN session reconnects still runs (rescan after reconnect)", async () => {
    const w = newWorker(() => {});
    await w.start();
    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    try {
      const started = startedTask(w);
      await admin.query(
        "select pg_terminate_backend(pid) from pg_stat_activity where application_name like 'holdfast:listen:%' and datname = current_database()",
      );
      // While the listener is down, the NOTIFY of this enqueue reaches nobody.
      const { id } = await hf.enqueue("job", { key: "reconnect:1" });
      const { task } = await started;
      expect(task.id).toBe(id);
    } finally {
      await admin.end();
    }
  });
});

describe("claim edge cases", () => {
  it("two tasks of the same key never run at once in one process", async () => {
    let running = 0;
    let maxRunning = 0;
    const w = newWorker(
      async () => {
        running++;
        maxRunning = Math.max(maxRunning, running);
        await new Promise((r) => setTimeout(r, 50));
        running--;
      },
      { concurrency: 5 },
    );
    await w.start();
    const ids: number[] = [];
    for (let i = 0; i < 8; i++) ids.push((await hf.enqueue("job", { key: "same-key" })).id);
    const done = new Set<number>();
    w.on("task:end", (t) => done.add(t.id));
    await until(() => ids.every((id) => done.has(id)), 15_000);
    expect(maxRunning).toBe(1);
    const { rows } = await db.pool.query(
      "select id, started_at, finished_at from holdfast.tasks where key = 'same-key' order by id",
    );
    // FIFO: each task of the key starts after the previous one finished.
    for (let i = 1; i < rows.length; i++)
      expect(rows[i].started_at >= rows[i - 1].finished_at).toBe(true);
  });

  it("a key skipped because a fenced write held its row is claimed soon after the write ends", async () => {
    const writer = new pg.Client({ connectionString: db.url });
    await writer.connect();
    try {
      await hf.enqueue("job", { key: "held-row" });
      // The row lock assert_fence takes inside a handler's write transaction.
      await writer.query("begin");
      await writer.query("select 1 from holdfast.keys where key = 'held-row' for key share");
      const w = newWorker(() => {}); // rescan every 10 minutes: only the re-claim backoff helps
      const started = startedTask(w, (t) => t.key === "held-row");
      await w.start();
      const early = await Promise.race([
        started.then(() => "started"),
        sleep(300).then(() => "waiting"),
      ]);
      expect(early).toBe("waiting");
      const released = performance.now();
      await writer.query("commit");
      const { at } = await started;
      expect(at - released).toBeLessThan(5_000);
    } finally {
      await writer.end();
    }
  });

  it("a claim in flight holds its keys: a concurrent claim neither waits for them nor runs them twice", async () => {
    const a = new pg.Client({ connectionString: db.url });
    const b = new pg.Client({ connectionString: db.url });
    const x = new pg.Client({ connectionString: db.url });
    await Promise.all([a.connect(), b.connect(), x.connect()]);
    try {
      const t1 = await hf.enqueue("job", { key: "race:1", priority: -2 });
      const t2 = await hf.enqueue("job", { key: "race:2", priority: -1 });
      // x holds t1's row: b's claim locks both keys (row and advisory lock) and then waits on
      // that row before it has marked any key busy.
      await x.query("begin");
      await x.query("select 1 from holdfast.tasks where id = $1 for update", [t1.id]);
      const bClaim = b.query("select * from holdfast.claim(array['job'], 'b', 2)");
      await waitForBlocked(a, "b");
      // Both keys still look ready to a's scan; a must skip them at once, not block or run them.
      const { rows } = await a.query("select * from holdfast.claim(array['job'], 'a', 2)");
      expect(rows).toEqual([]);
      await x.query("commit");
      const claimed = (await bClaim).rows.map((r) => Number(r.id));
      expect(claimed).toEqual([t1.id, t2.id]);
      const { rows: held } = await b.query(
        "select count(*)::int n from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()",
      );
      expect(held[0].n).toBe(2);
      const { rows: none } = await a.query(
        "select count(*)::int n from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()",
      );
      expect(none[0].n).toBe(0);
      const { rows: t } = await a.query(
        "select state, attempt, worker from holdfast.tasks where id = any($1) order by id",
        [[t1.id, t2.id]],
      );
      expect(t).toEqual([
        { state: "running", attempt: 1, worker: "b" },
        { state: "running", attempt: 1, worker: "b" },
      ]);
    } finally {
      await Promise.all([a.end(), b.end(), x.end()]);
    }
  });
});

/** Waits until the claim made for worker `name` is blocked on a row lock. */
async function waitForBlocked(observer: pg.Client, name: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const { rows } = await observer.query(
      "select count(*)::int n from pg_stat_activity where wait_event_type = 'Lock' and query like $1",
      [`%claim(array['job'], '${name}'%`],
    );
    if (rows[0].n > 0) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error("claim never blocked");
}
