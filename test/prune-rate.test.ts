import { expect, it } from "vitest";
import { Holdfast } from "../src/index.js";
import { freshDatabase, silent } from "./support/db.js";
import { until } from "./support/wait.js";

// Storage follows the rate, not the pruner's idle interval: while tasks keep running, each
// finished task leaves about one retention (and at most half a retention more) after it ended.
// With the default pruneIntervalMs (60 s), a timer-paced pruner keeps them for a minute.
it("while tasks run, finished tasks are pruned about one retention after they end, not after pruneIntervalMs", async () => {
  const db = await freshDatabase();
  const hf = new Holdfast({ connectionString: db.url, logger: silent });
  const retentionMs = 1_000;
  await hf.defineKind("steady", { retention: { succeeded: retentionMs } });
  const worker = hf.worker({ handlers: { steady: async () => {} }, concurrency: 2 });
  let ended = 0;
  worker.on("task:end", () => ended++);
  const pruned: number[] = [];
  worker.on("pruned", (p) => pruned.push(p.tasks));
  try {
    await worker.start();
    // A steady trickle: each enqueue is a wake the leader hears (activity).
    const first = await hf.enqueue("steady", { key: "s:0" });
    await until(() => ended === 1, 10_000, "the first task ended");
    for (let i = 1; ended < 40; i++) {
      await hf.enqueue("steady", { key: `s:${i}` });
      await until(() => ended >= i + 1, 10_000, `task ${i} ended`);
      await new Promise((r) => setTimeout(r, 100));
    }
    // Well within the minute a timer-paced pruner would wait; generous for a busy machine.
    await until(
      async () => {
        const { rows } = await db.pool.query("select 1 from holdfast.tasks where id = $1", [
          first.id,
        ]);
        return rows.length === 0;
      },
      15_000,
      "the first task pruned",
    );
    expect(pruned.reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
    // Pruned in several batches as tasks expire, not one sweep at the end.
    expect(pruned.filter((n) => n > 0).length).toBeGreaterThan(1);
  } finally {
    await worker.stop();
    await hf.close();
    await db.drop();
  }
});
