import { expect, it } from "vitest";
import { Holdfast } from "../src/index.js";
import { silent } from "./support/db.js";
import { useWorkerProcesses } from "./support/processes.js";
import { overlaps, type RunRow } from "./support/runs.js";

const t = useWorkerProcesses();

it("after SIGKILL of the process running a task, another process runs it as attempt 2 within 1 s", async () => {
  const [a, b] = await Promise.all([t.start("a"), t.start("b")]);
  const hf = new Holdfast({ pool: t.db.pool, logger: silent });
  const { id } = await hf.enqueue("job", { key: "dream:ws:alice:alice", payload: { ms: 60_000 } });

  const first = await Promise.race(
    [a, b].map((p) => p.waitFor((e) => e.event === "start" && e.id === id)),
  );
  const victim = first.worker === "a" ? a : b;
  const survivor = victim === a ? b : a;
  // Let the run settle into its long sleep, then kill the process outright.
  await new Promise((r) => setTimeout(r, 300));
  const killedAt = Date.now();
  await victim.kill("SIGKILL");

  const second = await survivor.waitFor(
    (e) => e.event === "start" && e.id === id && e.attempt === 2,
    10_000,
  );
  const takeoverMs = second.at - killedAt;
  console.log(`takeover after SIGKILL: ${takeoverMs} ms`);
  expect(takeoverMs).toBeLessThan(1_000);

  const { rows: attempts } = await t.db.pool.query(
    "select attempt, outcome, worker from holdfast.attempts where task_id = $1 order by attempt",
    [id],
  );
  // Ended attempts only; the running one is the task row.
  expect(attempts).toEqual([
    expect.objectContaining({ attempt: 1, outcome: "lost", worker: victim.name }),
  ]);
  const { rows: task } = await t.db.pool.query(
    "select state, attempt, worker from holdfast.tasks where id = $1",
    [id],
  );
  expect(task[0]).toEqual({ state: "running", attempt: 2, worker: survivor.name });
  const { rows: runs } = await t.db.pool.query<RunRow>("select * from runs where task_id = $1", [
    id,
  ]);
  expect(overlaps(runs, () => killedAt)).toEqual([]);
});
