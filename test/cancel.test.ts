import { afterAll, beforeAll, expect, it } from "vitest";
import { Holdfast, type Task, TaskCancelledError, TaskNotFoundError } from "../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";

let db: TestDatabase;
let hf: Holdfast;

beforeAll(async () => {
  db = await freshDatabase();
  hf = new Holdfast({ connectionString: db.url, logger: silent });
  await hf.defineKind("job");
});

afterAll(async () => {
  await hf.close();
  await db.drop();
});

async function row(id: number): Promise<{ state: string; attempt: number }> {
  return (await db.pool.query("select state, attempt from holdfast.tasks where id = $1", [id]))
    .rows[0];
}

it("a cancelled pending task never starts; the key's next task still runs", async () => {
  const started: number[] = [];
  const doomed = await hf.enqueue("job", { key: "k:1" });
  const next = await hf.enqueue("job", { key: "k:1" });
  expect(await hf.cancel(doomed.id)).toBe(true);
  const worker = hf.worker({ handlers: { job: (t) => void started.push(t.id) } });
  const nextDone = new Promise<void>((r) => worker.on("task:end", (t) => t.id === next.id && r()));
  await worker.start();
  await nextDone;
  await worker.stop();
  expect(started).toEqual([next.id]);
  expect(await row(doomed.id)).toEqual({ state: "cancelled", attempt: 0 });
  expect(await hf.cancel(doomed.id)).toBe(false); // already ended
  await expect(hf.cancel(99_999_999)).rejects.toBeInstanceOf(TaskNotFoundError);
});

it("cancelling a running task (from SQL) aborts its handler's signal and ends it cancelled", async () => {
  let reason: unknown;
  const worker = hf.worker({
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
  const long = await hf.enqueue("job", { key: "k:long", payload: { block: true } });
  const after = await hf.enqueue("job", { key: "k:long" });
  await started;
  const afterDone = new Promise<void>((r) =>
    worker.on("task:end", (t) => t.id === after.id && r()),
  );
  const { rows } = await db.pool.query("select holdfast.cancel($1) as ok", [long.id]);
  expect(rows[0].ok).toBe(true);
  await afterDone; // the key's lock was released: its next task ran
  await worker.stop();
  expect(reason).toBeInstanceOf(TaskCancelledError);
  expect(outcomes.get(long.id)).toBe("cancelled");
  expect(await row(long.id)).toEqual({ state: "cancelled", attempt: 1 });
  const { rows: attempts } = await db.pool.query(
    "select outcome from holdfast.attempts where task_id = $1",
    [long.id],
  );
  expect(attempts.map((a) => a.outcome)).toEqual(["cancelled"]);
  expect(await row(after.id)).toMatchObject({ state: "succeeded" });
});
