// Checkpoints through faults: a SIGKILLed worker's task resumes from its last checkpoint on
// another process (the work before the kill is not repeated), and a partitioned zombie's late
// checkpoint is refused once the task was taken over.
import pg from "pg";
import { expect, inject, it } from "vitest";
import { Holdfast, StaleFenceError, type Task } from "../src/index.js";
import { fastLockSession as fast, gate, lockHolder, waitEvent } from "./lock-loss/support.js";
import { silent } from "./support/db.js";
import { useWorkerProcesses } from "./support/processes.js";
import { startProxy } from "./support/tcp-proxy.js";
import { until } from "./support/wait.js";

const t = useWorkerProcesses();

interface StepRow {
  step: number;
  attempt: number;
  worker: string;
}

it("after SIGKILL mid-run, the next attempt on another process resumes from the checkpoint: no step is done twice", async () => {
  await t.db.pool.query(
    "create table step_log (task_id bigint, step int, attempt int, worker text, at timestamptz default clock_timestamp())",
  );
  const env = { HF_STEPS_KIND: "steps" };
  const [a, b] = await Promise.all([t.start("a", env), t.start("b", env)]);
  const hf = new Holdfast({ pool: t.db.pool, logger: silent });
  const steps = 8;
  const { id } = await hf.enqueue("steps", {
    key: "dream:ws:bob:bob",
    payload: { steps, stepMs: 250 },
  });
  const first = await Promise.race(
    [a, b].map((p) => p.waitFor((e) => e.event === "start" && e.id === id)),
  );
  expect(first.from).toBe(0);
  const victim = first.worker === "a" ? a : b;
  const survivor = victim === a ? b : a;
  await victim.waitFor((e) => e.event === "step" && e.id === id && e.step === 2);
  await victim.kill("SIGKILL");

  const resumed = await survivor.waitFor(
    (e) => e.event === "start" && e.id === id && e.attempt === 2,
    10_000,
  );
  await survivor.waitFor((e) => e.event === "end" && e.id === id, 20_000);
  const { rows } = await t.db.pool.query<StepRow>(
    "select step, attempt, worker from step_log where task_id = $1 order by at",
    [id],
  );
  const before = rows.filter((r) => r.attempt === 1);
  // Steps 0..2 at least were committed by the killed run (a step may have committed after the
  // event was read); the next attempt started exactly after the last of them.
  expect(before.length).toBeGreaterThanOrEqual(3);
  expect(before.every((r) => r.worker === victim.name)).toBe(true);
  expect(resumed.from).toBe(before.length);
  expect(rows.map((r) => r.step)).toEqual([...Array(steps).keys()]); // each step once, in order
  expect(rows.filter((r) => r.attempt === 2).every((r) => r.worker === survivor.name)).toBe(true);
  console.log(
    `SIGKILL after step ${before.length}/${steps}: resumed at step ${resumed.from}, ${rows.length - new Set(rows.map((r) => r.step)).size} steps repeated`,
  );
  // Reported after the handler's last event: the success clears the checkpoint.
  const task = await until(async () => {
    const r = await t.db.pool.query(
      "select state, attempt, checkpoint from holdfast.tasks where id = $1",
      [id],
    );
    return r.rows[0]?.state === "succeeded" ? r.rows[0] : undefined;
  });
  expect(task).toEqual({ state: "succeeded", attempt: 2, checkpoint: null });
  await hf.close();
});

it("a partitioned zombie's late checkpoint is refused after the takeover and leaves the new holder's checkpoint intact", async ({
  skip,
}) => {
  skip(inject("serverMajor") < 14, "PostgreSQL 13 has no idle_session_timeout");
  const proxy = await startProxy(t.db.url);
  const poolA = new pg.Pool({ connectionString: proxy.url, max: 2 });
  poolA.on("error", () => {});
  const hfA = new Holdfast({ pool: poolA, logger: silent });
  const hf = new Holdfast({ pool: t.db.pool, logger: silent });
  const zombieGo = gate<void>();
  const zombieResult = gate<unknown>();
  const bHolds = gate<void>();
  let bCheckpointed: unknown;
  // Worker a checkpoints, then ignores its abort (a zombie) until the test lets it write again.
  const a = hfA.worker({
    name: "za",
    lockSession: fast,
    handlers: {
      dream: async (_task: Task, ctx) => {
        await ctx.checkpoint({ by: "a", next: 1 });
        await zombieGo.promise;
        zombieResult.open(await ctx.checkpoint({ by: "a", next: 9 }).catch((e: unknown) => e));
      },
    },
  });
  await a.start();
  try {
    const { id } = await hf.enqueue("dream", { key: "dream:ws:carol:carol" });
    const [first] = await waitEvent(a, "task:start", (x) => x.id === id);
    await until(async () => {
      const r = await t.db.pool.query("select checkpoint from holdfast.tasks where id = $1", [id]);
      return r.rows[0]?.checkpoint?.next === 1;
    });
    const holderA = await lockHolder(t.db.pool, first.key);
    const b = hf.worker({
      name: "zb",
      handlers: {
        dream: async (task: Task, ctx) => {
          bCheckpointed = task.checkpoint;
          await ctx.checkpoint({ by: "b", next: 2 });
          await bHolds.promise;
        },
      },
    });
    await b.start();
    const takeover = waitEvent(b, "task:start", (x) => x.id === id, 20_000);
    const lost = waitEvent(a, "lock:lost", () => true, 20_000);
    proxy.partition();
    await lost;
    const [second] = await takeover;
    expect(second.attempt).toBe(2);
    expect(await lockHolder(t.db.pool, first.key)).not.toBe(holderA);
    await until(async () => {
      const r = await t.db.pool.query("select checkpoint from holdfast.tasks where id = $1", [id]);
      return r.rows[0]?.checkpoint?.by === "b";
    });
    // The partition heals: the zombie's write reaches Postgres with its old fence.
    proxy.heal();
    zombieGo.open();
    const err = await zombieResult.promise;
    expect(err).toBeInstanceOf(StaleFenceError);
    expect(bCheckpointed).toEqual({ by: "a", next: 1 }); // b resumed from a's checkpoint
    const { rows } = await t.db.pool.query(
      "select checkpoint, checkpoint_fence::bigint as cf from holdfast.tasks where id = $1",
      [id],
    );
    expect(rows[0]).toEqual({ checkpoint: { by: "b", next: 2 }, cf: String(second.fence) });
    bHolds.open();
    await waitEvent(b, "task:end", (x) => x.id === id);
    await b.stop();
  } finally {
    proxy.heal();
    zombieGo.open();
    await a.stop();
    await hfA.close();
    await poolA.end();
    await hf.close();
    await proxy.close();
  }
});
