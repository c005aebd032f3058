// Fenced checkpoints in one process: what the next attempt receives, what clears it, what is
// refused, batch kinds, and the shutdown hand-over. Crashes and partitions: checkpoint-crash.

import pg from "pg";
import { expect, it } from "vitest";
import {
  type HandlerContext,
  InvalidArgumentError,
  ShutdownError,
  StaleFenceError,
  type Task,
  TaskNotFoundError,
} from "../src/index.js";
import { gate, waitEvent } from "./lock-loss/support.js";
import { useHoldfast } from "./support/db.js";
import { until } from "./support/wait.js";

const t = useHoldfast();

interface Row {
  state: string;
  attempt: number;
  checkpoint: unknown;
  checkpoint_fence: string | null;
  fence: string | null;
}

async function row(id: number): Promise<Row> {
  const { rows } = await t.db.pool.query<Row>(
    "select state, attempt, checkpoint, checkpoint_fence, fence from holdfast.tasks where id = $1",
    [id],
  );
  if (!rows[0]) throw new Error(`no task ${id}`);
  return rows[0];
}

it("a retry after a thrown error resumes from the checkpoint; the success clears it", async () => {
  const seen: Array<{ attempt: number; checkpoint: unknown }> = [];
  const w = t.hf.worker({
    handlers: {
      resumes: {
        maxAttempts: 3,
        handler: async (task: Task<unknown, { step: number }>, ctx) => {
          seen.push({ attempt: task.attempt, checkpoint: task.checkpoint });
          const from = task.checkpoint?.step ?? 0;
          await ctx.checkpoint({ step: from + 1, progress: 0.5, note: "half" });
          if (task.attempt === 1) throw new Error("transient");
        },
      },
    },
  });
  await w.start();
  const { id } = await t.hf.enqueue("resumes", { key: "k:retry" });
  await waitEvent(w, "task:end", (task, info) => task.id === id && info.outcome === "succeeded");
  expect(seen).toEqual([
    { attempt: 1, checkpoint: null },
    { attempt: 2, checkpoint: { step: 1, progress: 0.5, note: "half" } },
  ]);
  expect(await row(id)).toMatchObject({ state: "succeeded", attempt: 2, checkpoint: null });
  await w.stop();
});

it("a kind with keepCheckpoint keeps it after a success; a dead letter keeps it for retry(id)", async () => {
  await t.hf.defineKind("kept", { keepCheckpoint: true });
  const w = t.hf.worker({
    handlers: {
      kept: async (_task, ctx) => ctx.checkpoint({ done: true, progress: 1 }),
      doomed: {
        maxAttempts: 1,
        handler: async (_task, ctx) => {
          await ctx.checkpoint({ at: 7 });
          throw new Error("always");
        },
      },
    },
  });
  await w.start();
  const { id: kept } = await t.hf.enqueue("kept", { key: "k:kept" });
  const { id: doomed } = await t.hf.enqueue("doomed", { key: "k:doomed" });
  await until(async () => (await row(kept)).state === "succeeded");
  await until(async () => (await row(doomed)).state === "failed");
  expect((await row(kept)).checkpoint).toEqual({ done: true, progress: 1 });
  expect((await row(doomed)).checkpoint).toEqual({ at: 7 });
  await w.stop();
});

it("a checkpoint over 1 MiB, a progress outside 0..1 or a non-string note is refused (HF002), nothing written", async () => {
  const errors: unknown[] = [];
  const w = t.hf.worker({
    handlers: {
      big: async (_task, ctx) => {
        await ctx.checkpoint({ step: 1 });
        for (const bad of [
          { blob: "x".repeat(1024 * 1024) },
          { progress: 1.5 },
          { progress: "half" },
          { note: 3 },
          undefined,
        ]) {
          errors.push(await ctx.checkpoint(bad).catch((err: unknown) => err));
        }
      },
    },
  });
  await w.start();
  await t.hf.defineKind("big", { keepCheckpoint: true });
  const { id } = await t.hf.enqueue("big", { key: "k:big" });
  await waitEvent(w, "task:end", (task) => task.id === id);
  expect(errors).toHaveLength(5);
  for (const err of errors) expect(err).toBeInstanceOf(InvalidArgumentError);
  expect(errors.map((e) => (e as InvalidArgumentError).code)).toEqual(Array(5).fill("HF002"));
  expect(await row(id)).toMatchObject({ state: "succeeded", checkpoint: { step: 1 } });
  await w.stop();
});

it("a checkpoint after the run ended is refused: StaleFenceError, the signal aborted, nothing written", async () => {
  let late: HandlerContext | undefined;
  const w = t.hf.worker({
    handlers: {
      ended: async (_task, ctx) => {
        late = ctx;
      },
    },
  });
  await w.start();
  const { id } = await t.hf.enqueue("ended", { key: "k:ended" });
  const [task] = await waitEvent(w, "task:end", (x) => x.id === id);
  await until(async () => (await row(id)).state === "succeeded");
  const err = await late?.checkpoint({ step: 99 }).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(StaleFenceError);
  expect(late?.signal.aborted).toBe(true);
  expect(late?.signal.reason).toBe(err);
  expect((await row(id)).checkpoint).toBeNull();
  // From SQL: an ended run, a wrong fence and an unknown task.
  const call = (i: number, f: number) =>
    t.db.pool.query<{ ok: boolean }>("select holdfast.checkpoint($1, $2, '{}') as ok", [i, f]);
  expect((await call(id, task.fence)).rows[0]?.ok).toBe(false);
  await expect(call(9_999_999, 1)).rejects.toMatchObject({ code: "HF003" });
  expect(new TaskNotFoundError("x").code).toBe("HF003");
  await w.stop();
});

it("a checkpoint from a stale fence or a dead holder is refused even while the task runs", async () => {
  // A plain SQL session claims the task and then disconnects: the task is still 'running'
  // (no sweep runs here) but its holder is gone.
  await t.hf.defineKind("manual");
  const { id } = await t.hf.enqueue("manual", { key: "k:manual" });
  const holder = new pg.Client({ connectionString: t.db.url });
  await holder.connect();
  const pid = (await holder.query<{ pid: number }>("select pg_backend_pid() as pid")).rows[0]?.pid;
  const { rows } = await holder.query<{ fence: string }>(
    "select fence from holdfast.claim(array['manual'], 'sql')",
  );
  const fence = Number(rows[0]?.fence);
  const call = (f: number) =>
    t.db.pool.query<{ ok: boolean }>("select holdfast.checkpoint($1, $2, $3) as ok", [
      id,
      f,
      { n: f },
    ]);
  expect((await call(fence - 1)).rows[0]?.ok).toBe(false);
  // From another session than the holder's: fenced by SQL, not by the connection.
  expect((await call(fence)).rows[0]?.ok).toBe(true);
  expect(await row(id)).toMatchObject({ state: "running", checkpoint: { n: fence } });
  await holder.end();
  await until(
    async () =>
      (await t.db.pool.query("select 1 from pg_stat_activity where pid = $1", [pid])).rowCount ===
      0,
  );
  expect((await call(fence)).rows[0]?.ok).toBe(false); // its holder is gone
  expect(await row(id)).toMatchObject({ state: "running", checkpoint: { n: fence } });
  await t.db.pool.query("select holdfast.sweep()");
  expect((await row(id)).state).toBe("pending");
  await t.db.pool.query("select holdfast.cancel($1)", [id]);
});

it("with { client } the checkpoint commits with the handler's writes, or rolls back with them", async () => {
  await t.db.pool.query("create table if not exists written (task bigint, step int)");
  const seen: unknown[] = [];
  const w = t.hf.worker({
    handlers: {
      tx: {
        maxAttempts: 3,
        handler: async (task: Task<unknown, { step: number }>, ctx) => {
          seen.push(task.checkpoint);
          const client = await t.db.pool.connect();
          try {
            for (let step = (task.checkpoint?.step ?? 0) + 1; step <= 3; step++) {
              await client.query("begin");
              await ctx.assertFence(client);
              await client.query("insert into written values ($1, $2)", [task.id, step]);
              await ctx.checkpoint({ step }, { client });
              // Attempt 1 fails in the middle of step 2's transaction: step 2 is rolled back
              // with its checkpoint, so attempt 2 starts again at step 2.
              if (task.attempt === 1 && step === 2) {
                await client.query("rollback");
                throw new Error("crash mid-transaction");
              }
              await client.query("commit");
            }
          } finally {
            client.release();
          }
        },
      },
    },
  });
  await w.start();
  const { id } = await t.hf.enqueue("tx", { key: "k:tx" });
  await until(async () => (await row(id)).state === "succeeded");
  expect(seen).toEqual([null, { step: 1 }]);
  const { rows } = await t.db.pool.query<{ step: number }>(
    "select step from written where task = $1 order by step",
    [id],
  );
  expect(rows.map((r) => r.step)).toEqual([1, 2, 3]); // each step written once
  await w.stop();
});

it("a batch kind: each task of the batch has its own checkpoint; the failed batch's retry resumes each", async () => {
  const seen: Array<Array<{ id: number; checkpoint: unknown }>> = [];
  let other: unknown; // a checkpoint for a task that is not the run's
  const w = t.hf.worker({
    handlers: {
      batched: {
        batch: { max: 3 },
        maxAttempts: 3,
        handleBatch: async (tasks: Task<{ n: number }, { n: number; all?: boolean }>[], ctx) => {
          seen.push(tasks.map((x) => ({ id: x.id, checkpoint: x.checkpoint })));
          if (tasks[0]?.attempt !== 1) return;
          await ctx.checkpoint({ n: 0, all: true }); // every task of the run
          for (const task of tasks) await ctx.checkpoint({ n: task.payload.n }, { task });
          other = await ctx.checkpoint({ n: -1 }, { task: 1 }).catch((e: unknown) => e);
          throw new Error("batch fails once");
        },
      },
    },
  });
  // Enqueued before the worker starts, so the first claim takes all three as one batch.
  const ids: number[] = [];
  await t.hf.defineKind("batched", { batch: { max: 3 } });
  for (const n of [10, 20, 30])
    ids.push((await t.hf.enqueue("batched", { key: "k:batch", payload: { n } })).id);
  await w.start();
  await until(async () => (await row(ids[2] ?? 0)).state === "succeeded");
  expect(seen).toEqual([
    ids.map((id) => ({ id, checkpoint: null })),
    ids.map((id, i) => ({ id, checkpoint: { n: [10, 20, 30][i] } })),
  ]);
  expect(other).toBeInstanceOf(InvalidArgumentError);
  await w.stop();
});

it("stop() past the shutdown timeout hands a checkpointed run over without counting an attempt; another worker resumes it at once, before the key's follow-up, in its capped kind's freed slot", async () => {
  const started = gate<void>();
  await t.hf.defineKind("long", { maxRunning: 1 });
  const a = t.hf.worker({
    name: "a",
    shutdownTimeoutMs: 200,
    handlers: {
      long: async (task: Task, ctx) => {
        if (task.checkpoint !== null) return; // only the first run waits
        await ctx.checkpoint({ step: 4, progress: 0.4 });
        started.open();
        await new Promise((_, reject) =>
          ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason)),
        );
      },
    },
  });
  await a.start();
  const { id } = await t.hf.enqueue("long", { key: "k:handover" });
  await started.promise;
  const { id: followUp } = await t.hf.enqueue("long", { key: "k:handover" });
  const resumed: Array<{ id: number; attempt: number; checkpoint: unknown }> = [];
  const b = t.hf.worker({
    name: "b",
    handlers: {
      long: async (task: Task) => {
        resumed.push({ id: task.id, attempt: task.attempt, checkpoint: task.checkpoint });
      },
    },
  });
  await b.start();
  const ended = waitEvent(a, "task:end", (x) => x.id === id);
  const takeover = waitEvent(b, "task:start", (x) => x.id === id);
  const stoppedAt = Date.now();
  await a.stop();
  const [, info] = await ended;
  expect(info.outcome).toBe("handed_over");
  expect(info.error).toBeInstanceOf(ShutdownError);
  const [task] = await takeover;
  console.log(`hand-over: resumed by b ${Date.now() - stoppedAt} ms after stop() began`);
  // The same attempt number: the handed-over run was not counted.
  expect(task.attempt).toBe(1);
  expect(task.checkpoint).toEqual({ step: 4, progress: 0.4 });
  await until(async () => (await row(followUp)).state === "succeeded");
  // The handed-over task kept its place: it ran before the follow-up queued behind it.
  expect(resumed).toEqual([
    { id, attempt: 1, checkpoint: { step: 4, progress: 0.4 } },
    { id: followUp, attempt: 1, checkpoint: null },
  ]);
  const { rows } = await t.db.pool.query(
    "select attempt, outcome, worker from holdfast.attempts where task_id = $1 order by attempt",
    [id],
  );
  expect(rows).toEqual([{ attempt: 1, outcome: "succeeded", worker: "b" }]);
  await b.stop();
});

it("stop() past the shutdown timeout of a run that never checkpointed counts a failed attempt", async () => {
  const started = gate<void>();
  const a = t.hf.worker({
    name: "a2",
    shutdownTimeoutMs: 100,
    handlers: {
      nockpt: async (_task, ctx) => {
        started.open();
        await new Promise((_, reject) =>
          ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason)),
        );
      },
    },
  });
  await a.start();
  const { id } = await t.hf.enqueue("nockpt", { key: "k:nockpt" });
  await started.promise;
  const ended = waitEvent(a, "task:end", (x) => x.id === id);
  await a.stop();
  expect((await ended)[1].outcome).toBe("failed");
  expect(await row(id)).toMatchObject({ state: "pending", attempt: 1, checkpoint: null });
  await t.db.pool.query("select holdfast.cancel($1)", [id]);
});

it("a checkpoint from an earlier run of the task does not make a shutdown hand it over", async () => {
  // Attempt 1 checkpoints and fails; attempt 2 is stopped by a shutdown before its own
  // checkpoint: it counts (the hand-over needs a checkpoint written under this run's fence).
  const second = gate<void>();
  const a = t.hf.worker({
    name: "a3",
    shutdownTimeoutMs: 100,
    handlers: {
      twice: {
        maxAttempts: 5,
        handler: async (task: Task, ctx) => {
          if (task.attempt === 1) {
            await ctx.checkpoint({ step: 1 });
            throw new Error("first attempt fails");
          }
          second.open();
          await new Promise((_, reject) =>
            ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason)),
          );
        },
      },
    },
  });
  await a.start();
  const { id } = await t.hf.enqueue("twice", { key: "k:twice" });
  await second.promise;
  const ended = waitEvent(a, "task:end", (x) => x.id === id);
  await a.stop();
  expect((await ended)[1].outcome).toBe("failed");
  expect(await row(id)).toMatchObject({ state: "pending", attempt: 2, checkpoint: { step: 1 } });
  await t.db.pool.query("select holdfast.cancel($1)", [id]);
});

it("a shutdown hands a checkpointed batch over whole: every task pending again, attempts not counted", async () => {
  const started = gate<void>();
  await t.hf.defineKind("hbatch", { batch: { max: 3 } });
  const ids: number[] = [];
  for (const n of [1, 2, 3])
    ids.push((await t.hf.enqueue("hbatch", { key: "k:hbatch", payload: { n } })).id);
  const a = t.hf.worker({
    name: "a4",
    shutdownTimeoutMs: 100,
    handlers: {
      hbatch: {
        batch: { max: 3 },
        handleBatch: async (_tasks: Task[], ctx) => {
          await ctx.checkpoint({ half: true }); // every task of the run
          started.open();
          await new Promise((_, reject) =>
            ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason)),
          );
        },
      },
    },
  });
  await a.start();
  await started.promise;
  const outcomes: string[] = [];
  a.on("task:end", (_task, info) => outcomes.push(info.outcome));
  await a.stop();
  expect(outcomes).toEqual(["handed_over", "handed_over", "handed_over"]);
  for (const id of ids)
    expect(await row(id)).toMatchObject({
      state: "pending",
      attempt: 0,
      checkpoint: { half: true },
    });
  for (const id of ids) await t.db.pool.query("select holdfast.cancel($1)", [id]);
});

it("a cancel requested while a shutdown aborts a checkpointed run ends it cancelled, not handed over", async () => {
  const started = gate<void>();
  const a = t.hf.worker({
    name: "a5",
    shutdownTimeoutMs: 100,
    handlers: {
      cancelled: async (task: Task, ctx) => {
        await ctx.checkpoint({ step: 1 });
        started.open();
        await new Promise((_, reject) =>
          ctx.signal.addEventListener("abort", () => {
            // The cancel commits after the shutdown aborted the run, before it ends.
            t.hf.cancel(task.id).then(() => reject(ctx.signal.reason), reject);
          }),
        );
      },
    },
  });
  await a.start();
  const { id } = await t.hf.enqueue("cancelled", { key: "k:cancel-shutdown" });
  await started.promise;
  const ended = waitEvent(a, "task:end", (x) => x.id === id);
  await a.stop();
  // Reported with fail(), which records the cancel (the event says failed: the run's signal
  // was aborted by the shutdown, not by the cancel).
  expect((await ended)[1].outcome).not.toBe("handed_over");
  expect(await row(id)).toMatchObject({ state: "cancelled", attempt: 1 });
});
