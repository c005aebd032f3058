import { expect, it } from "vitest";
import { Holdfast } from "../src/index.js";
import { silent } from "./support/db.js";
import { useWorkerProcesses } from "./support/processes.js";
import { overlaps, type RunRow } from "./support/runs.js";

const t = useWorkerProcesses();

it("3 processes x concurrency 2 never overlap runs of a key, and run every task exactly once", async () => {
  await Promise.all(["a", "b", "c"].map((n) => t.start(n, { HF_CONCURRENCY: "2" })));
  const hf = new Holdfast({ pool: t.db.pool, logger: silent });
  const keys = ["dream:ws:alice", "dream:ws:bob", "dream:ws:carol", "dream:ws:dave"];
  for (let i = 0; i < 20; i++) {
    // Each run lasts far longer than the sweep interval and any claim round trip.
    await hf.enqueue("job", { key: keys[i % 4] as string, payload: { ms: 2_000 } });
  }
  const deadline = Date.now() + 90_000;
  for (;;) {
    const { rows } = await t.db.pool.query(
      "select count(*)::int as n from holdfast.tasks where state <> 'succeeded'",
    );
    if (rows[0].n === 0 || Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  const { rows: tasks } = await t.db.pool.query("select state, attempt from holdfast.tasks");
  expect(tasks).toHaveLength(20);
  expect(tasks.every((t) => t.state === "succeeded" && t.attempt === 1)).toBe(true);
  const { rows: runs } = await t.db.pool.query<RunRow>("select * from runs");
  expect(runs).toHaveLength(20);
  expect(new Set(runs.map((r) => r.task_id)).size).toBe(20);
  expect(overlaps(runs)).toEqual([]);
  // The work was spread: more than one process ran tasks, and keys ran side by side.
  expect(new Set(runs.map((r) => r.worker)).size).toBeGreaterThan(1);
});
