import { afterAll, beforeAll, expect, it } from "vitest";
import { Holdfast, type Worker } from "../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";

let db: TestDatabase;
const instances: Holdfast[] = [];

beforeAll(async () => {
  db = await freshDatabase();
});

afterAll(async () => {
  await Promise.all(instances.map((h) => h.close()));
  await db.drop();
});

const intervalMs = 1_500;

it("minimum interval per key and kind holds with 3 producers and 3 workers", async () => {
  const runs: Array<{ key: string; worker: string; start: number; end: number }> = [];
  const workers: Worker[] = [];
  for (const name of ["w1", "w2", "w3"]) {
    const hf = new Holdfast({ connectionString: db.url, logger: silent });
    instances.push(hf);
    const worker = hf.worker({
      name,
      concurrency: 2,
      // The timer, not this rescan, must wake the workers when the interval ends.
      rescanIntervalMs: 60_000,
      handlers: {
        dream: {
          minInterval: intervalMs,
          handler: async (task) => {
            const start = Date.now();
            await new Promise((r) => setTimeout(r, 100));
            runs.push({ key: task.key, worker: name, start, end: Date.now() });
            // The worker of the first run leaves after it: later runs come from other
            // sessions, so the interval must hold across sessions, not in one worker's memory.
            if (runs.length === 1) setTimeout(() => void worker.stop(), 0);
          },
        },
      },
    });
    workers.push(worker);
  }
  await Promise.all(workers.map((w) => w.start()));

  // Producers keep asking for dreams of two peers (deduped) for 5 seconds.
  const producers = [0, 1, 2].map(() => {
    const hf = new Holdfast({ connectionString: db.url, logger: silent });
    instances.push(hf);
    return hf;
  });
  const until = Date.now() + 5_000;
  await Promise.all(
    producers.map(async (hf, i) => {
      while (Date.now() < until) {
        for (const peer of ["alice", "bob"]) {
          await hf.enqueue("dream", {
            key: `ws:${peer}`,
            dedupeKey: `dream:${peer}`,
            payload: { i },
          });
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    }),
  );
  await Promise.all(workers.map((w) => w.stop()));

  for (const key of ["ws:alice", "ws:bob"]) {
    const list = runs.filter((r) => r.key === key).sort((a, b) => a.start - b.start);
    // 5 s of demand with a 1.5 s interval: 3 or 4 runs, never more.
    expect(list.length).toBeGreaterThanOrEqual(3);
    expect(list.length).toBeLessThanOrEqual(4);
    for (let i = 1; i < list.length; i++) {
      const gap = (list[i]?.start ?? 0) - (list[i - 1]?.end ?? 0);
      expect(gap).toBeGreaterThanOrEqual(intervalMs - 20);
      // Woken by the timer at the interval's end, not by a 60 s rescan.
      expect(gap).toBeLessThan(intervalMs + 1_000);
    }
  }
  // Consecutive runs of one key on different workers: the interval held across sessions.
  const first = runs[0];
  const next = runs.find((r) => r.key === first?.key && r !== first);
  expect(next?.worker).toBeDefined();
  expect(next?.worker).not.toBe(first?.worker);
});
