import { expect, it } from "vitest";
import { Holdfast, type Task } from "../src/index.js";
import { silent, useHoldfast } from "./support/db.js";
import { until } from "./support/wait.js";

const t = useHoldfast({ dream: {} });

it("20 concurrent producers of one dedupe key leave exactly one pending task", async () => {
  // Separate Holdfast instances: 20 connections enqueue at the same moment.
  const producers = Array.from(
    { length: 20 },
    () => new Holdfast({ connectionString: t.db.url, logger: silent }),
  );
  try {
    const results = await Promise.all(
      producers.map((p, i) =>
        p.enqueue("dream", { key: "ws:alice:alice", dedupeKey: "dream:alice", payload: { i } }),
      ),
    );
    const ids = new Set(results.map((r) => r.id));
    expect(ids.size).toBe(1);
    expect(results.filter((r) => !r.deduped)).toHaveLength(1);
    const { rows } = await t.db.pool.query(
      "select count(*)::int as n from holdfast.tasks where dedupe_key = 'dream:alice' and state = 'pending'",
    );
    expect(rows[0].n).toBe(1);
  } finally {
    await Promise.all(producers.map((p) => p.close()));
  }
});

it("requests during a run yield exactly one follow-up run, with the payload kept", async () => {
  const key = "ws:bob:bob";
  const started: Task<{ n: number }>[] = [];
  let release!: () => void;
  const firstRunBlocked = new Promise<void>((r) => {
    release = r;
  });
  const first = await t.hf.enqueue("dream", { key, dedupeKey: `dream:${key}`, payload: { n: 0 } });
  const worker = t.hf.worker({
    concurrency: 2,
    handlers: {
      dream: async (task: Task<{ n: number }>) => {
        if (task.key !== key) return;
        started.push(task);
        if (task.id === first.id) await firstRunBlocked;
      },
    },
  });
  const ended = new Map<number, string>();
  worker.on("task:end", (t, r) => ended.set(t.id, r.outcome));
  const firstStarted = new Promise<void>((r) =>
    worker.on("task:start", (t) => t.id === first.id && r()),
  );
  await worker.start();
  await firstStarted;

  // Five producers ask for a dream while the first one runs.
  const during = await Promise.all(
    [1, 2, 3, 4, 5].map((n) =>
      t.hf.enqueue("dream", { key, dedupeKey: `dream:${key}`, payload: { n } }),
    ),
  );
  const followUp = during[0]?.id as number;
  expect(new Set(during.map((d) => d.id))).toEqual(new Set([followUp]));
  expect(followUp).not.toBe(first.id);
  expect(during.filter((d) => !d.deduped)).toHaveLength(1);

  release();
  await until(() => ended.get(followUp) === "succeeded");
  await worker.stop();
  expect(started.map((t) => t.id)).toEqual([first.id, followUp]);
  // 'keep' (the default): the follow-up carries the payload of the request that created it.
  const creator = during.findIndex((d) => !d.deduped) + 1;
  expect(started[1]?.payload).toEqual({ n: creator });
});

it("onDedupe 'replace' and 'merge' update the pending task's payload", async () => {
  const key = "ws:carol:carol";
  const a = await t.hf.enqueue("dream", { key, dedupeKey: "c", payload: { a: 1, b: 1 } });
  await t.hf.enqueue("dream", { key, dedupeKey: "c", payload: { b: 2, c: 2 }, onDedupe: "merge" });
  const payload = async () =>
    (await t.db.pool.query("select payload from holdfast.tasks where id = $1", [a.id])).rows[0]
      .payload;
  expect(await payload()).toEqual({ a: 1, b: 2, c: 2 });
  const r = await t.hf.enqueue("dream", {
    key,
    dedupeKey: "c",
    payload: { z: 9 },
    onDedupe: "replace",
  });
  expect(r).toEqual({ id: a.id, deduped: true });
  expect(await payload()).toEqual({ z: 9 });
  await expect(t.hf.enqueue("dream", { key: "other", dedupeKey: "c" })).rejects.toMatchObject({
    code: "HF002",
  });
});
