import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { Holdfast, type Task, type Worker } from "../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";
import { sleep, until } from "./support/wait.js";

// No lost wake-ups with many idle workers: tasks enqueued in bursts, one transaction each or
// many tasks in one (Postgres then delivers one notification for all of them). Every worker
// here rescans only every 10 minutes, so a task that starts was started by a wake (or by a
// worker that finished a task and claimed again): a lost wake-up fails these tests. They hold
// for any way of choosing which idle workers claim (every one, as now, or fewer).

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

interface Fleet {
  starts: Map<number, number>;
  /** Claims that left a worker idle, per worker. */
  emptyClaims: number[];
}

/** `n` workers of concurrency 1 whose handler holds each task `holdMs`, all idle. */
async function startFleet(n: number, holdMs: () => number): Promise<Fleet> {
  const fleet: Fleet = { starts: new Map(), emptyClaims: [] };
  for (let i = 0; i < n; i++) {
    const w = hf.worker({
      name: `fleet-${i}`,
      handlers: { job: () => sleep(holdMs()) },
      rescanIntervalMs: 600_000,
    });
    fleet.emptyClaims.push(0);
    w.on("task:start", (t: Task) => fleet.starts.set(t.id, (fleet.starts.get(t.id) ?? 0) + 1));
    w.on("idle", () => {
      fleet.emptyClaims[i] = (fleet.emptyClaims[i] ?? 0) + 1;
    });
    workers.push(w);
    await w.start();
  }
  // Each worker's first claim found nothing: all idle.
  await until(() => fleet.emptyClaims.every((c) => c > 0), 10_000, "every worker idle");
  await sleep(200);
  return fleet;
}

async function enqueueInOneTransaction(keys: string[]): Promise<number[]> {
  const c = await db.pool.connect();
  try {
    await c.query("begin");
    const ids: number[] = [];
    for (const key of keys) {
      const { rows } = await c.query<{ id: string }>("select holdfast.enqueue('job', $1) as id", [
        key,
      ]);
      ids.push(Number(rows[0]?.id));
    }
    await c.query("commit");
    return ids;
  } catch (err) {
    await c.query("rollback");
    throw err;
  } finally {
    c.release();
  }
}

describe("a fleet of idle workers and bursts of tasks", () => {
  it("a burst of as many tasks as idle workers runs all at once, from separate transactions or one", async () => {
    // Each handler holds its task until every task of its burst started (a barrier): if a
    // wake-up were lost, a task would wait for a worker that never claims, and the barrier
    // would not open.
    type Barrier = { size: number; started: number; open: () => void; opened: Promise<void> };
    const newBarrier = (size: number): Barrier => {
      let open = () => {};
      const opened = new Promise<void>((r) => (open = r));
      return { size, started: 0, open, opened };
    };
    let barrier = newBarrier(0);
    const n = 8;
    const fleet: Fleet = { starts: new Map(), emptyClaims: [] };
    for (let i = 0; i < n; i++) {
      const w = hf.worker({
        name: `burst-${i}`,
        handlers: {
          job: async () => {
            const b = barrier;
            if (++b.started === b.size) b.open();
            await Promise.race([b.opened, sleep(10_000)]);
          },
        },
        rescanIntervalMs: 600_000,
      });
      w.on("task:start", (t: Task) => fleet.starts.set(t.id, (fleet.starts.get(t.id) ?? 0) + 1));
      workers.push(w);
      await w.start();
    }
    await sleep(500); // all idle
    for (const [round, size] of [1, 3, 8, 5, 8, 2, 8].entries()) {
      barrier = newBarrier(size);
      const keys = Array.from({ length: size }, (_, i) => `burst-${round}-${i}`);
      const ids =
        round % 2 === 0
          ? await Promise.all(keys.map((key) => hf.enqueue("job", { key }).then((r) => r.id)))
          : await enqueueInOneTransaction(keys); // one notification for all of them
      const opened = await Promise.race([
        barrier.opened.then(() => true),
        sleep(10_000).then(() => false),
      ]);
      expect({ round, size, allRunningAtOnce: opened }).toEqual({
        round,
        size,
        allRunningAtOnce: true,
      });
      await until(
        async () => {
          const { rows } = await db.pool.query<{ n: number }>(
            "select count(*)::int as n from holdfast.tasks where id = any($1) and state = 'succeeded'",
            [ids],
          );
          return rows[0]?.n === ids.length;
        },
        10_000,
        `burst ${round} done`,
      );
      expect(ids.filter((id) => fleet.starts.get(id) !== 1)).toEqual([]);
      await sleep(round % 3 === 0 ? 0 : 150); // back to back, or once the workers are idle again
    }
  });

  it("a burst larger than the fleet, in one transaction, drains", async () => {
    const fleet = await startFleet(4, () => 20 + Math.random() * 30);
    const ids = await enqueueInOneTransaction(Array.from({ length: 13 }, (_, i) => `big-${i}`));
    await until(() => ids.every((id) => fleet.starts.has(id)), 20_000, "every task started");
    expect(ids.filter((id) => fleet.starts.get(id) !== 1)).toEqual([]);
  });
});
