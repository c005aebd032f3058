// A handler that ignores its abort signal keeps running after its lock is gone. Fencing is
// what keeps it harmless: its guarded writes and its completion are rejected.
import { afterAll, beforeAll, expect, it } from "vitest";
import {
  type HandlerContext,
  Holdfast,
  LockLostError,
  StaleFenceError,
  type Task,
} from "../../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "../support/db.js";
import { gate, lockHolder, until, waitEvent } from "./support.js";

let db: TestDatabase;
let hf: Holdfast;

beforeAll(async () => {
  db = await freshDatabase();
  await db.pool.query("create table effects (task_id bigint, attempt int, fence bigint)");
  hf = new Holdfast({ pool: db.pool, logger: silent });
});

afterAll(async () => {
  await hf.close();
  await db.drop();
});

/** The handler's own write, guarded by the fence in the same transaction. */
async function guardedWrite(task: Task, assertFence: HandlerContext["assertFence"]) {
  const client = await db.pool.connect();
  try {
    await client.query("begin");
    await assertFence(client);
    await client.query("insert into effects values ($1, $2, $3)", [
      task.id,
      task.attempt,
      task.fence,
    ]);
    await client.query("commit");
  } catch (err) {
    await client.query("rollback");
    throw err;
  } finally {
    client.release();
  }
}

it("a handler that ignores its abort signal has its fenced writes and its completion rejected", async () => {
  const release = gate();
  let zombieWrite: unknown = "not attempted";
  let zombieSignalReason: unknown;
  const a = hf.worker({
    name: "a",
    handlers: {
      job: async (task: Task, ctx) => {
        if (task.attempt === 1) {
          await release.promise; // deaf to ctx.signal
          zombieSignalReason = ctx.signal.reason;
          zombieWrite = await guardedWrite(task, ctx.assertFence).then(
            () => "committed",
            (err: unknown) => err,
          );
          return; // "success", which must not be recorded
        }
        await guardedWrite(task, ctx.assertFence);
      },
    },
  });
  await a.start();
  const { id } = await hf.enqueue("job", { key: "dream:ws:carol:carol" });
  const [first] = await waitEvent(a, "task:start", (t) => t.id === id);

  const holdB = gate();
  const b = hf.worker({
    name: "b",
    handlers: {
      job: async (task: Task, ctx) => {
        await holdB.promise;
        await guardedWrite(task, ctx.assertFence);
      },
    },
  });
  await b.start();
  const takeoverStart = waitEvent(b, "task:start", (t) => t.id === id && t.attempt === 2);
  const takeoverEnd = waitEvent(b, "task:end", (t) => t.id === id && t.attempt === 2);
  const zombieEnd = waitEvent(a, "task:end", (t) => t.id === id && t.attempt === 1);
  await db.pool.query("select pg_terminate_backend($1)", [await lockHolder(db.pool, first.key)]);

  const [second] = await takeoverStart;
  expect(second.fence).toBeGreaterThan(first.fence);
  // The zombie still runs: its slot stays taken, so worker a does not double-book itself.
  expect(a.activeCount).toBe(1);

  release.open();
  const [, zombieOutcome] = await zombieEnd;
  expect(zombieSignalReason).toBeInstanceOf(LockLostError);
  expect(zombieWrite).toBeInstanceOf(StaleFenceError);
  expect(zombieOutcome.outcome).toBe("lost"); // its success was never reported

  // Its completion or failure, sent late with its fence while attempt 2 runs, is rejected
  // and changes nothing.
  for (const late of [
    "select holdfast.complete($1, $2) as ok",
    "select holdfast.fail($1, $2, 'late', interval '0') as ok",
  ]) {
    const { rows } = await db.pool.query<{ ok: boolean }>(late, [id, first.fence]);
    expect(rows[0]?.ok).toBe(false);
  }
  const state = async () =>
    (
      await db.pool.query(
        "select state, attempt, fence::bigint::float8 as fence, last_error->>'message' as error from holdfast.tasks where id = $1",
        [id],
      )
    ).rows[0];
  const during = await state();
  expect(during).toMatchObject({ state: "running", attempt: 2, fence: second.fence });
  expect(during.error).not.toBe("late");

  holdB.open();
  const [, secondOutcome] = await takeoverEnd;
  expect(secondOutcome.outcome).toBe("succeeded");
  expect(await state()).toMatchObject({ state: "succeeded", attempt: 2 });
  const { rows: effects } = await db.pool.query("select attempt from effects where task_id = $1", [
    id,
  ]);
  expect(effects).toEqual([{ attempt: 2 }]);
  await until(async () => a.activeCount === 0, 5_000, "zombie slot freed");
});
