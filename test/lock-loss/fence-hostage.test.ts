// A fenced write whose client vanished must not hold its key hostage. assert_fence takes a KEY
// SHARE lock on the key's row, which claims (FOR UPDATE SKIP LOCKED) wait out. A worker that is
// partitioned right after assert_fence leaves its pool backend idle in transaction, holding
// that lock; behind a user-space proxy (or a NAT that answers keepalives) TCP never ends it.
// The lock session's bound frees the key's advisory lock; the fenced transaction must end
// within the same bound, rolled back, so that another worker claims the key and the zombie's
// write never commits.
import pg from "pg";
import { afterAll, beforeAll, expect, inject, it } from "vitest";
import { Holdfast } from "../../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "../support/db.js";
import { startProxy, type TcpProxy } from "../support/tcp-proxy.js";
import { fastLockSession as fast, gate, waitEvent } from "./support.js";

let db: TestDatabase;
let proxy: TcpProxy;
const cleanup: Array<() => Promise<unknown>> = [];

beforeAll(async () => {
  db = await freshDatabase();
  await db.pool.query("create table writes (task_id bigint, worker text)");
  proxy = await startProxy(db.url);
});

afterAll(async () => {
  for (const f of cleanup.reverse()) await f().catch(() => {});
  await proxy.close();
  await db.drop();
});

it("a worker partitioned right after assert_fence: the key is claimed again within the lock session's bound and the zombie's write never commits", async ({
  skip,
}) => {
  skip(inject("serverMajor") < 14, "PostgreSQL 13 has no idle_session_timeout");
  const fenced = gate<number>();
  // Worker a reaches Postgres only through the proxy (lock, LISTEN and its pool).
  const poolA = new pg.Pool({ connectionString: proxy.url, max: 2 });
  poolA.on("error", () => {});
  const hfA = new Holdfast({ pool: poolA, logger: silent });
  const a = hfA.worker({
    name: "a",
    lockSession: fast,
    handlers: {
      job: async (task, ctx) => {
        const client = await poolA.connect();
        client.on("error", () => {});
        await client.query("begin");
        await client.query("insert into writes values ($1, 'a')", [task.id]);
        await ctx.assertFence(client);
        fenced.open(Date.now());
        // The commit never arrives: the test partitions the proxy now. (The handler's signal
        // aborts on lock loss, but this query is not abortable: it hangs, as a real one would.)
        await client.query("commit").catch(() => {});
        client.release(true);
      },
    },
  });
  await a.start();
  cleanup.push(async () => {
    proxy.heal();
    await hfA.close();
    await poolA.end();
  });

  const hf = new Holdfast({ pool: db.pool, logger: silent });
  const b = hf.worker({
    name: "b",
    handlers: {
      job: async (task, ctx) => {
        const client = await db.pool.connect();
        try {
          await client.query("begin");
          await client.query("insert into writes values ($1, 'b')", [task.id]);
          await ctx.assertFence(client);
          await client.query("commit");
        } finally {
          client.release();
        }
      },
    },
  });
  const { id } = await hf.enqueue("job", { key: "dream:ws:zombie:zombie" });
  await fenced.promise;
  proxy.partition();
  const partitionedAt = Date.now();
  await b.start();
  cleanup.push(() => b.stop());

  const [second] = await waitEvent(b, "task:start", (t) => t.id === id, 60_000);
  const claimedAfter = Date.now() - partitionedAt;
  console.log(`fenced write partitioned: key claimed again after ${claimedAfter} ms`);
  expect(second.attempt).toBe(2);
  await waitEvent(b, "task:end", (t) => t.id === id);
  const { rows } = await db.pool.query("select worker from writes where task_id = $1", [id]);
  expect(rows).toEqual([{ worker: "b" }]);
  const { rows: attempts } = await db.pool.query(
    "select attempt, outcome, worker from holdfast.attempts where task_id = $1 order by attempt",
    [id],
  );
  expect(attempts).toEqual([
    expect.objectContaining({ attempt: 1, outcome: "lost", worker: "a" }),
    expect.objectContaining({ attempt: 2, outcome: "succeeded", worker: "b" }),
  ]);
  // Healed: the zombie's commit reaches a backend that is gone; still only b's write.
  proxy.heal();
  await new Promise((r) => setTimeout(r, 500));
  const { rows: after } = await db.pool.query("select worker from writes where task_id = $1", [id]);
  expect(after).toEqual([{ worker: "b" }]);
}, 90_000);
