import { afterAll, beforeAll, expect, it } from "vitest";
import { Holdfast } from "../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";
import {
  createRunsTable,
  overlaps,
  type RunRow,
  startWorkerProcess,
  type WorkerProcess,
} from "./support/processes.js";

let db: TestDatabase;
const procs: WorkerProcess[] = [];

beforeAll(async () => {
  db = await freshDatabase();
  await createRunsTable(db.pool);
});

afterAll(async () => {
  await Promise.all(procs.map((p) => p.kill()));
  await db.drop();
});

it("after SIGKILL of the process running a task, another process runs it as attempt 2 within 1 s", async () => {
  const a = await startWorkerProcess(db.url, "a");
  const b = await startWorkerProcess(db.url, "b");
  procs.push(a, b);
  const hf = new Holdfast({ pool: db.pool, logger: silent });
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

  const { rows: attempts } = await db.pool.query(
    "select attempt, outcome, worker from holdfast.attempts where task_id = $1 order by attempt",
    [id],
  );
  expect(attempts[0]).toMatchObject({ attempt: 1, outcome: "lost", worker: victim.name });
  expect(attempts[1]).toMatchObject({ attempt: 2, outcome: null, worker: survivor.name });
  const { rows: runs } = await db.pool.query<RunRow>("select * from runs where task_id = $1", [id]);
  expect(overlaps(runs, () => killedAt)).toEqual([]);
});

it("a task that kills its worker every time ends dead-lettered after max attempts", async () => {
  const hf = new Holdfast({ pool: db.pool, logger: silent });
  const { id } = await hf.enqueue("job", {
    key: "crashloop",
    payload: { ms: 60_000 },
    maxAttempts: 2,
  });
  for (let attempt = 1; attempt <= 2; attempt++) {
    const p = await startWorkerProcess(db.url, `crash${attempt}`);
    procs.push(p);
    await p.waitFor((e) => e.event === "start" && e.id === id && e.attempt === attempt);
    await p.kill("SIGKILL");
  }
  const sweeper = await startWorkerProcess(db.url, "sweeper");
  procs.push(sweeper);
  const deadline = Date.now() + 10_000;
  let state = "";
  while (Date.now() < deadline) {
    state = (await db.pool.query("select state from holdfast.tasks where id = $1", [id])).rows[0]
      .state;
    if (state === "failed") break;
    await new Promise((r) => setTimeout(r, 100));
  }
  expect(state).toBe("failed");
  const { rows } = await db.pool.query(
    "select outcome from holdfast.attempts where task_id = $1 order by attempt",
    [id],
  );
  expect(rows.map((r) => r.outcome)).toEqual(["lost", "lost"]);
  expect(sweeper.events.some((e) => e.event === "start" && e.id === id)).toBe(false);
});
