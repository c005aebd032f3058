import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import type { Task, Worker } from "../src/index.js";
import { useHoldfast } from "./support/db.js";
import { until } from "./support/wait.js";

// Guarantee 6: a key's tasks start in (priority, enqueue) order through lost attempts,
// retries, batches, dead letters and cancels. Each scenario queues follow-ups on the key.
const t = useHoldfast({
  strict: {},
  relaxed: { strictOrder: false },
  batched: { batch: { max: 3 } },
  once: { maxAttempts: 1 },
});

const clients: pg.Client[] = [];
async function session(): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: t.db.url });
  c.on("error", () => {}); // a test terminates one on purpose
  await c.connect();
  clients.push(c);
  return c;
}
afterAll(async () => {
  await Promise.all(clients.map((c) => c.end().catch(() => {})));
});

async function enqueueAll(kind: string, key: string, n: number): Promise<number[]> {
  const ids: number[] = [];
  for (let i = 0; i < n; i++) ids.push((await t.hf.enqueue(kind, { key, payload: { i } })).id);
  return ids;
}

interface Claimed {
  id: string;
  fence: string;
  attempt: number;
}
async function claim(c: pg.Client, kind: string): Promise<Claimed[]> {
  return (
    await c.query<Claimed>("select id, fence, attempt from holdfast.claim($1, 'w', 10)", [[kind]])
  ).rows;
}

describe("from SQL alone", () => {
  it("a failed task to be retried stays its key's head: the next claim returns it, not the task behind", async () => {
    const [t1, t2] = await enqueueAll("strict", "sql:retry", 2);
    const c = await session();
    const [first] = await claim(c, "strict");
    expect(Number(first?.id)).toBe(t1);
    await c.query("select holdfast.fail($1, $2, 'boom', interval '0')", [first?.id, first?.fence]);
    const again = await claim(c, "strict");
    expect(again.map((r) => [Number(r.id), r.attempt])).toEqual([[t1, 2]]);
    await c.query("select holdfast.complete($1, $2)", [again[0]?.id, again[0]?.fence]);
    expect((await claim(c, "strict")).map((r) => Number(r.id))).toEqual([t2]);
  });

  it("while the head waits out its backoff, the key's later tasks wait too (nothing claimable)", async () => {
    const [t1] = await enqueueAll("strict", "sql:backoff", 2);
    const c = await session();
    const [first] = await claim(c, "strict");
    await c.query("select holdfast.fail($1, $2, 'boom', interval '1 hour')", [
      first?.id,
      first?.fence,
    ]);
    expect(await claim(c, "strict")).toEqual([]);
    // The key's head is the retried task, due in an hour: a worker's timer is set for it.
    const { rows } = await c.query(
      "select head_id, head_run_at > now() + interval '59 minutes' as later from holdfast.keys where key = 'sql:backoff'",
    );
    expect(rows[0]).toEqual({ head_id: String(t1), later: true });
  });

  it("strictOrder false lets the key's later tasks pass a task waiting out its backoff", async () => {
    const [t1, t2, t3] = await enqueueAll("relaxed", "sql:relaxed", 3);
    const c = await session();
    const [first] = await claim(c, "relaxed");
    expect(Number(first?.id)).toBe(t1);
    await c.query("select holdfast.fail($1, $2, 'boom', interval '0.3 s')", [
      first?.id,
      first?.fence,
    ]);
    const order: number[] = [];
    for (let i = 0; i < 3; ) {
      const got = await claim(c, "relaxed");
      for (const r of got) {
        order.push(Number(r.id));
        await c.query("select holdfast.complete($1, $2)", [r.id, r.fence]);
        i++;
      }
      if (got.length === 0) await new Promise((r) => setTimeout(r, 50));
    }
    expect(order).toEqual([t2, t3, t1]);
  });

  it("a task whose holder session died is its key's head again and claimable at once", async () => {
    const [t1, t2] = await enqueueAll("strict", "sql:lost", 2);
    const holder = await session();
    const [first] = await claim(holder, "strict");
    expect(Number(first?.id)).toBe(t1);
    const pid = (await holder.query("select pg_backend_pid() as pid")).rows[0].pid;
    await t.db.pool.query("select pg_terminate_backend($1)", [pid]);
    await until(async () => {
      const { rows } = await t.db.pool.query("select 1 from pg_stat_activity where pid = $1", [
        pid,
      ]);
      return rows.length === 0 ? true : undefined;
    });
    const sweeper = await session();
    expect((await sweeper.query("select holdfast.sweep() as n")).rows[0].n).toBe(1);
    const next = await claim(sweeper, "strict");
    expect(next.map((r) => [Number(r.id), r.attempt])).toEqual([[t1, 2]]);
    await sweeper.query("select holdfast.complete($1, $2)", [next[0]?.id, next[0]?.fence]);
    expect((await claim(sweeper, "strict")).map((r) => Number(r.id))).toEqual([t2]);
  });

  it("a head that is dead-lettered or cancelled during its backoff lets the key move on", async () => {
    const [d1, d2] = await enqueueAll("once", "sql:dead", 2);
    const c = await session();
    const [a] = await claim(c, "once");
    expect(Number(a?.id)).toBe(d1);
    await c.query("select holdfast.fail($1, $2, 'boom')", [a?.id, a?.fence]);
    expect((await claim(c, "once")).map((r) => Number(r.id))).toEqual([d2]);

    const [s1, s2] = await enqueueAll("strict", "sql:cancel", 2);
    const [b] = await claim(c, "strict");
    expect(Number(b?.id)).toBe(s1);
    await c.query("select holdfast.fail($1, $2, 'boom', interval '1 hour')", [b?.id, b?.fence]);
    expect(await claim(c, "strict")).toEqual([]);
    await t.db.pool.query("select holdfast.cancel($1)", [s1]);
    expect((await claim(c, "strict")).map((r) => Number(r.id))).toEqual([s2]);
  });

  it("a delayed enqueue takes its place at its start time: tasks due earlier pass it, later ones wait", async () => {
    const c = await session();
    const late = (
      await t.hf.enqueue("strict", { key: "sql:delay", runAt: new Date(Date.now() + 400) })
    ).id;
    const now = (await t.hf.enqueue("strict", { key: "sql:delay" })).id;
    const after = (
      await t.hf.enqueue("strict", { key: "sql:delay", runAt: new Date(Date.now() + 600) })
    ).id;
    const order: number[] = [];
    while (order.length < 3) {
      const got = await claim(c, "strict");
      for (const r of got) {
        order.push(Number(r.id));
        await c.query("select holdfast.complete($1, $2)", [r.id, r.fence]);
      }
      if (got.length === 0) await new Promise((r) => setTimeout(r, 50));
    }
    expect(order).toEqual([now, late, after]);
  });
});

function recordStarts(worker: Worker, into: string[]): void {
  worker.on("task:start", (task: Task) =>
    into.push(`${(task.payload as { i: number }).i}#${task.attempt}`),
  );
}

describe("through a worker", () => {
  it("t1 throws on attempt 1: t2 and t3 start only after t1's retry succeeded", async () => {
    const starts: string[] = [];
    const worker = t.hf.worker({
      concurrency: 3,
      handlers: {
        strict: async (task: Task<{ i: number }>) => {
          if (task.payload.i === 0 && task.attempt === 1) throw new Error("first attempt fails");
        },
      },
    });
    recordStarts(worker, starts);
    await enqueueAll("strict", "w:retry", 3);
    await worker.start();
    await until(async () => (starts.length === 4 ? true : undefined), 15_000);
    await worker.stop();
    expect(starts).toEqual(["0#1", "0#2", "1#1", "2#1"]);
  });

  it("with strictOrder false, t2 and t3 pass t1 while it waits out its backoff", async () => {
    const starts: string[] = [];
    const worker = t.hf.worker({
      concurrency: 3,
      handlers: {
        relaxed: {
          strictOrder: false,
          handler: async (task: Task<{ i: number }>) => {
            if (task.payload.i === 0 && task.attempt === 1) throw new Error("first attempt fails");
          },
        },
      },
    });
    recordStarts(worker, starts);
    await enqueueAll("relaxed", "w:relaxed", 3);
    await worker.start();
    await until(async () => (starts.length === 4 ? true : undefined), 15_000);
    await worker.stop();
    expect(starts).toEqual(["0#1", "1#1", "2#1", "0#2"]);
  });

  it("a failed batch is retried whole at its key's head, before the tasks queued behind it", async () => {
    const batches: string[][] = [];
    let failed = false;
    const worker = t.hf.worker({
      handlers: {
        batched: {
          batch: { max: 3 },
          handleBatch: async (tasks: Task<{ i: number }>[]) => {
            batches.push(tasks.map((x) => `${x.payload.i}#${x.attempt}`));
            if (!failed) {
              failed = true;
              throw new Error("the whole batch fails once");
            }
          },
        },
      },
    });
    await enqueueAll("batched", "w:batch", 5);
    await worker.start();
    await until(async () => (batches.flat().length === 8 ? true : undefined), 15_000);
    await worker.stop();
    expect(batches.slice(0, 2)).toEqual([
      ["0#1", "1#1", "2#1"],
      ["0#2", "1#2", "2#2"],
    ]);
    expect(batches.slice(2).flat()).toEqual(["3#1", "4#1"]);
  });
});
