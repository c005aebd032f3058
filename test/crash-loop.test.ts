// Its own file so that it runs beside the takeover test (crash.test.ts): each starts several
// worker processes one after another, the slowest part of the suite and of each major in
// npm run test:versions.
import { expect, it } from "vitest";
import { Holdfast } from "../src/index.js";
import { silent } from "./support/db.js";
import { useWorkerProcesses } from "./support/processes.js";

const t = useWorkerProcesses();

it("a task that kills its worker every time ends dead-lettered after max attempts", async () => {
  const hf = new Holdfast({ pool: t.db.pool, logger: silent });
  // The worker processes define it too; this file enqueues before starting any.
  await hf.defineKind("job");
  const { id } = await hf.enqueue("job", {
    key: "crashloop",
    payload: { ms: 60_000 },
    maxAttempts: 2,
  });
  for (let attempt = 1; attempt <= 2; attempt++) {
    const p = await t.start(`crash${attempt}`);
    await p.waitFor((e) => e.event === "start" && e.id === id && e.attempt === attempt);
    await p.kill("SIGKILL");
  }
  const sweeper = await t.start("sweeper");
  const deadline = Date.now() + 10_000;
  let state = "";
  while (Date.now() < deadline) {
    state = (await t.db.pool.query("select state from holdfast.tasks where id = $1", [id])).rows[0]
      .state;
    if (state === "failed") break;
    await new Promise((r) => setTimeout(r, 100));
  }
  expect(state).toBe("failed");
  const { rows } = await t.db.pool.query(
    "select outcome from holdfast.attempts where task_id = $1 order by attempt",
    [id],
  );
  expect(rows.map((r) => r.outcome)).toEqual(["lost", "lost"]);
  expect(sweeper.events.some((e) => e.event === "start" && e.id === id)).toBe(false);
});
