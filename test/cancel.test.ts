import { expect, it } from "vitest";
import { type Task, TaskCancelledError, TaskNotFoundError } from "../src/index.js";
import { useHoldfast } from "./support/db.js";

const t = useHoldfast({ job: {} });

async function row(id: number): Promise<{ state: string; attempt: number }> {
  return (await t.db.pool.query("select state, attempt from holdfast.tasks where id = $1", [id]))
    .rows[0];
}

it("a cancelled pending task never starts; the key's next task still runs", async () => {
  const started: number[] = [];
  const doomed = await t.hf.enqueue("job", { key: "k:1" });
  const next = await t.hf.enqueue("job", { key: "k:1" });
  expect(await t.hf.cancel(doomed.id)).toBe(true);
  const worker = t.hf.worker({ handlers: { job: (t) => void started.push(t.id) } });
  const nextDone = new Promise<void>((r) => worker.on("task:end", (t) => t.id === next.id && r()));
  await worker.start();
  await nextDone;
  await worker.stop();
  expect(started).toEqual([next.id]);
  expect(await row(doomed.id)).toEqual({ state: "cancelled", attempt: 0 });
  expect(await t.hf.cancel(doomed.id)).toBe(false); // already ended
  await expect(t.hf.cancel(99_999_999)).rejects.toBeInstanceOf(TaskNotFoundError);
});

it("cancelling a running task (from SQL) aborts its handler's signal and ends it cancelled", async () => {
  let reason: unknown;
  const worker = t.hf.worker({
    handlers: {
      job: async (task: Task<{ block?: boolean }>, ctx) => {
        if (!task.payload.block) return;
        await new Promise<void>((_, reject) => {
          ctx.signal.addEventListener("abort", () => {
            reason = ctx.signal.reason;
            reject(ctx.signal.reason);
          });
        });
      },
    },
  });
  const outcomes = new Map<number, string>();
  worker.on("task:end", (t, r) => outcomes.set(t.id, r.outcome));
  await worker.start();
  const started = new Promise<void>((r) =>
    worker.on("task:start", (t) => t.key === "k:long" && r()),
  );
  const long = await t.hf.enqueue("job", { key: "k:long", payload: { block: true } });
  const after = await t.hf.enqueue("job", { key: "k:long" });
  await started;
  const afterDone = new Promise<void>((r) =>
    worker.on("task:end", (t) => t.id === after.id && r()),
  );
  const { rows } = await t.db.pool.query("select holdfast.cancel($1) as ok", [long.id]);
  expect(rows[0].ok).toBe(true);
  await afterDone; // the key's lock was released: its next task ran
  await worker.stop();
  expect(reason).toBeInstanceOf(TaskCancelledError);
  expect(outcomes.get(long.id)).toBe("cancelled");
  expect(await row(long.id)).toEqual({ state: "cancelled", attempt: 1 });
  const { rows: attempts } = await t.db.pool.query(
    "select outcome from holdfast.attempts where task_id = $1",
    [long.id],
  );
  expect(attempts.map((a) => a.outcome)).toEqual(["cancelled"]);
  expect(await row(after.id)).toMatchObject({ state: "succeeded" });
});
