// prefetch: tasks claimed ahead of free slots hold their key locks while they wait, start
// without a round trip, and are given back on stop or dropped with a lost session.
import { expect, it } from "vitest";
import type { Task } from "../src/index.js";
import { gate, until, waitEvent } from "./lock-loss/support.js";
import { useHoldfast } from "./support/db.js";

const t = useHoldfast({ job: {} });

async function lockSessionLocks(name: string): Promise<number> {
  const { rows } = await t.db.pool.query(
    `select count(*)::int as n from pg_locks l join pg_stat_activity a on a.pid = l.pid
     where l.locktype = 'advisory' and l.objsubid = 1 and a.application_name = $1`,
    [`holdfast:lock:${name}`],
  );
  return rows[0].n;
}

async function states(ids: number[]) {
  const { rows } = await t.db.pool.query(
    "select id::int, state, attempt from holdfast.tasks where id = any($1) order by id",
    [ids],
  );
  return rows as Array<{ id: number; state: string; attempt: number }>;
}

it("prefetched tasks hold their locks, run one slot at a time, and stop() gives back the unstarted ones", async () => {
  const { hf } = t;
  const ids: number[] = [];
  for (let i = 0; i < 6; i++) ids.push((await hf.enqueue("job", { key: `pf:${i}` })).id);
  const release = gate();
  let running = 0;
  let maxRunning = 0;
  const started: number[] = [];
  const a = hf.worker({
    name: "pf-a",
    concurrency: 1,
    prefetch: 3,
    handlers: {
      job: async (task: Task) => {
        started.push(task.id);
        maxRunning = Math.max(maxRunning, ++running);
        await release.promise;
        running--;
      },
    },
  });
  await a.start();
  await waitEvent(a, "task:start", () => true);
  // One running and three prefetched: four key locks on the one lock session.
  await until(async () => (await lockSessionLocks("pf-a")) === 4, 5_000, "four locks held");
  const stopping = a.stop();
  await until(async () => (await lockSessionLocks("pf-a")) === 1, 5_000, "prefetched released");
  release.open();
  await stopping;

  expect(started).toHaveLength(1);
  expect(maxRunning).toBe(1);
  const after = await states(ids);
  expect(after.filter((r) => r.state === "succeeded").map((r) => r.id)).toEqual(started);
  // The others are pending again and no attempt was counted for the ones given back.
  expect(after.filter((r) => r.state === "pending").every((r) => r.attempt === 0)).toBe(true);
  expect(after.filter((r) => r.state === "pending")).toHaveLength(5);
  const { rows: attempts } = await t.db.pool.query(
    "select count(*)::int as n from holdfast.attempts where task_id = any($1)",
    [ids],
  );
  expect(attempts[0].n).toBe(1);

  // Another worker runs the rest, each once, as attempt 1.
  const b = hf.worker({
    name: "pf-b",
    concurrency: 2,
    prefetch: 2,
    handlers: { job: async () => {} },
  });
  await b.start();
  try {
    await until(async () => (await states(ids)).every((r) => r.state === "succeeded"), 10_000);
    expect((await states(ids)).map((r) => r.attempt)).toEqual([1, 1, 1, 1, 1, 1]);
  } finally {
    await b.stop();
  }
});

it("a lost lock session drops its prefetched tasks: none starts under the lost locks; each runs once after the sweep", async () => {
  const { hf } = t;
  const ids: number[] = [];
  for (let i = 0; i < 5; i++) ids.push((await hf.enqueue("job", { key: `pf-lost:${i}` })).id);
  const hold = gate();
  const starts: Array<{ id: number; attempt: number }> = [];
  const a = hf.worker({
    name: "pf-lost-a",
    concurrency: 1,
    prefetch: 4,
    handlers: {
      job: async (task: Task, ctx) => {
        starts.push({ id: task.id, attempt: task.attempt });
        if (task.attempt > 1) return;
        await Promise.race([
          hold.promise,
          new Promise((r) => ctx.signal.addEventListener("abort", r)),
        ]);
      },
    },
  });
  await a.start();
  const [first] = await waitEvent(a, "task:start", () => true);
  await until(async () => (await lockSessionLocks("pf-lost-a")) === 5, 5_000, "five locks held");
  const lost = waitEvent(a, "lock:lost", () => true);
  await t.db.pool.query(
    "select pg_terminate_backend(pid) from pg_stat_activity where application_name = $1",
    ["holdfast:lock:pf-lost-a"],
  );
  await lost;
  hold.open();
  try {
    // The worker reconnects, its sweep requeues all five, and it runs them again.
    await until(async () => (await states(ids)).every((r) => r.state === "succeeded"), 10_000);
  } finally {
    await a.stop();
  }
  const byTask = (id: number) => starts.filter((s) => s.id === id).map((s) => s.attempt);
  // The started one lost its attempt 1; the prefetched ones never started, were dropped with
  // the lost session, and were given back without counting an attempt.
  expect(byTask(first.id)).toEqual([1, 2]);
  for (const id of ids.filter((i) => i !== first.id)) expect(byTask(id)).toEqual([1]);
  const { rows } = await t.db.pool.query(
    "select task_id::int, outcome from holdfast.attempts where task_id = any ($1) and outcome = 'lost'",
    [ids],
  );
  expect(rows).toEqual([{ task_id: first.id, outcome: "lost" }]);
});

it("a prefetched task that started counts its attempt when the session is lost: its start is recorded with the next round trip", async () => {
  const { hf } = t;
  const quick = (await hf.enqueue("job", { key: "pf-mark:quick", payload: { quick: true } })).id;
  const slow = (await hf.enqueue("job", { key: "pf-mark:slow" })).id;
  const hold = gate();
  const a = hf.worker({
    name: "pf-mark",
    concurrency: 1,
    prefetch: 1,
    handlers: {
      job: async (task: Task<{ quick?: boolean }>, ctx) => {
        if (task.payload.quick || task.attempt > 1) return;
        await Promise.race([
          hold.promise,
          new Promise((r) => ctx.signal.addEventListener("abort", r)),
        ]);
      },
    },
  });
  await a.start();
  // quick runs first, slow waits claimed ahead, then starts in the slot quick frees; the next
  // round trip records slow's start (quick's report goes by the LISTEN session meanwhile).
  await until(async () => {
    const { rows } = await t.db.pool.query(
      "select started_at is not null as started from holdfast.tasks where id = $1 and state = 'running'",
      [slow],
    );
    return rows[0]?.started === true ? true : undefined;
  }, 5_000);
  await until(async () => (await states([quick]))[0]?.state === "succeeded" || undefined, 5_000);
  const lost = waitEvent(a, "lock:lost", () => true);
  await t.db.pool.query(
    "select pg_terminate_backend(pid) from pg_stat_activity where application_name = $1",
    ["holdfast:lock:pf-mark"],
  );
  await lost;
  hold.open();
  try {
    await until(async () => (await states([slow]))[0]?.state === "succeeded", 10_000);
  } finally {
    await a.stop();
  }
  const { rows } = await t.db.pool.query(
    "select attempt, outcome from holdfast.attempts where task_id = $1 order by attempt",
    [slow],
  );
  expect(rows).toEqual([
    { attempt: 1, outcome: "lost" },
    { attempt: 2, outcome: "succeeded" },
  ]);
});
