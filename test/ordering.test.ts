import { expect, it } from "vitest";
import type { Task, Worker } from "../src/index.js";
import { useHoldfast } from "./support/db.js";

const t = useHoldfast({
  rep: {},
  batch: { batch: { max: 5 } },
  other: {},
  fbatch: { batch: { max: 5 } },
});

type Seq = { seq: number };

function waitFor(worker: Worker, pred: (t: Task) => boolean): Promise<void> {
  return new Promise((resolve) => {
    const on = (t: Task, r: { outcome: string }) => {
      if (pred(t) && r.outcome === "succeeded") {
        worker.off("task:end", on);
        resolve();
      }
    };
    worker.on("task:end", on);
  });
}

it("tasks of a key start in enqueue order and never overlap, under 3 workers", async () => {
  const keys = ["s:1", "s:2", "s:3", "s:4"];
  const runs: Array<{ key: string; seq: number; start: number; end: number }> = [];
  for (let seq = 0; seq < 15; seq++) {
    for (const key of keys) await t.hf.enqueue("rep", { key, payload: { seq } });
  }
  const workers = [1, 2, 3].map((i) =>
    t.hf.worker({
      name: `fifo${i}`,
      concurrency: 2,
      handlers: {
        rep: async (task: Task<Seq>) => {
          const start = performance.now();
          await new Promise((r) => setTimeout(r, Math.random() * 5));
          runs.push({ key: task.key, seq: task.payload.seq, start, end: performance.now() });
        },
      },
    }),
  );
  const done = Promise.race(
    workers.map(
      (w) =>
        new Promise<void>((resolve) => {
          w.on("task:end", () => runs.length === 60 && resolve());
        }),
    ),
  );
  await Promise.all(workers.map((w) => w.start()));
  await done;
  await Promise.all(workers.map((w) => w.stop()));
  expect(runs).toHaveLength(60);
  for (const key of keys) {
    const list = runs.filter((r) => r.key === key).sort((a, b) => a.start - b.start);
    expect(list.map((r) => r.seq)).toEqual([...Array(15).keys()]);
    for (let i = 1; i < list.length; i++) {
      expect(list[i]?.start).toBeGreaterThanOrEqual(list[i - 1]?.end ?? 0);
    }
  }
});

it("a batch kind's handler gets up to batch.max tasks of one key, in order, stopping at another kind", async () => {
  const batches: Array<{ key: string; seqs: number[]; fences: Set<number> }> = [];
  const key = "b:1";
  for (let seq = 0; seq < 12; seq++) await t.hf.enqueue("batch", { key, payload: { seq } });
  // A task of another kind in the key's line: the batch must not jump over it.
  await t.hf.enqueue("other", { key, payload: { seq: 12 } });
  await t.hf.enqueue("batch", { key, payload: { seq: 13 } });
  const order: number[] = [];
  const worker = t.hf.worker({
    concurrency: 4,
    handlers: {
      batch: {
        batch: { max: 5 },
        handleBatch: async (tasks: Task<Seq>[]) => {
          batches.push({
            key: tasks[0]?.key ?? "",
            seqs: tasks.map((t) => t.payload.seq),
            fences: new Set(tasks.map((t) => t.fence)),
          });
          order.push(...tasks.map((t) => t.payload.seq));
        },
      },
      other: async (task: Task<Seq>) => {
        order.push(task.payload.seq);
      },
    },
  });
  const last = waitFor(worker, (t) => (t.payload as Seq).seq === 13);
  await worker.start();
  await last;
  await worker.stop();
  expect(batches.map((b) => b.seqs)).toEqual([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11], [13]]);
  expect(order).toEqual([...Array(14).keys()]);
  // One claim, one fence for the whole batch.
  expect(batches.every((b) => b.fences.size === 1)).toBe(true);
});

it("fairness: a key with 1,000 pending tasks delays another key's single task by at most one batch", async () => {
  const hot = "hot";
  for (let i = 0; i < 1000; i += 100) {
    await t.db.pool.query(
      "select holdfast.enqueue('batch', $1, jsonb_build_object('seq', g)) from generate_series($2::int, $2::int + 99) g",
      [hot, i],
    );
  }
  const events: Array<{ key: string; phase: "start" | "end"; seq: number }> = [];
  const worker = t.hf.worker({
    concurrency: 1,
    handlers: {
      batch: {
        batch: { max: 5 },
        handleBatch: async (tasks: Task<Seq>[]) => {
          const seq = tasks[0]?.payload.seq ?? -1;
          events.push({ key: tasks[0]?.key ?? "", phase: "start", seq });
          await new Promise((r) => setTimeout(r, 20));
          events.push({ key: tasks[0]?.key ?? "", phase: "end", seq });
        },
      },
    },
  });
  const hotStarted = new Promise<void>((r) => worker.once("task:start", () => r()));
  const coldDone = waitFor(worker, (t) => t.key === "cold");
  await worker.start();
  await hotStarted;
  const enqueuedAt = events.length;
  await t.hf.enqueue("batch", { key: "cold", payload: { seq: 0 } });
  await coldDone;
  await worker.stop();
  const after = events.slice(enqueuedAt);
  const coldStart = after.findIndex((e) => e.key === "cold" && e.phase === "start");
  // Before the cold task starts, at most the hot batch in flight ends; no new hot batch starts.
  const hotStartsBefore = after.slice(0, coldStart).filter((e) => e.phase === "start");
  expect(hotStartsBefore.length).toBeLessThanOrEqual(1);
  const { rows } = await t.db.pool.query(
    "select count(*)::int as n from holdfast.tasks where key = 'hot' and state = 'pending'",
  );
  expect(rows[0].n).toBeGreaterThan(900); // the hot key was far from drained
});

it("a failed batch is retried in its order", async () => {
  const key = "b:retry";
  for (let seq = 0; seq < 4; seq++) await t.hf.enqueue("fbatch", { key, payload: { seq } });
  const calls: number[][] = [];
  const worker = t.hf.worker({
    handlers: {
      fbatch: {
        batch: { max: 5 },
        handleBatch: async (tasks: Task<Seq>[]) => {
          calls.push(tasks.map((t) => t.payload.seq));
          if (calls.length === 1) throw new Error("model unavailable");
        },
      },
    },
  });
  const last = waitFor(worker, (t) => t.key === key && (t.payload as Seq).seq === 3);
  await worker.start();
  await last;
  await worker.stop();
  expect(calls[0]).toEqual([0, 1, 2, 3]);
  expect(calls.slice(1).flat()).toEqual([0, 1, 2, 3]);
});
