import type pg from "pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { freshDatabase, type TestDatabase } from "./support/db.js";

// Guarantee 7: a holder is alive only while it holds its key's lock. A session pooler keeps
// the server backend of a client that died and resets it (DISCARD ALL frees its advisory
// locks), then may hand that backend to another client: same pid, same backend start. What
// must hold: the orphans view and the sweep see such a run as orphaned, the sweep requeues it
// (also when the sweep runs on that very backend), and a report for that holder is rejected.

let db: TestDatabase;
const session = () => db.session();

const pidOf = async (c: pg.Client) =>
  (await c.query<{ pid: number }>("select pg_backend_pid() as pid")).rows[0]?.pid as number;

/** Each test enqueues and claims its own kind, so that no test claims another's task. */
async function enqueueAndClaim(holder: pg.Client, kind: string, key: string) {
  await db.pool.query("select holdfast.enqueue($1, $2, '{}')", [kind, key]);
  const { rows } = await holder.query("select id, fence from holdfast.claim(array[$1], 'w')", [
    kind,
  ]);
  expect(rows).toHaveLength(1);
  return rows[0] as { id: string; fence: string };
}

const orphanIds = async () =>
  (await db.pool.query<{ id: string }>("select id from holdfast.orphans order by id")).rows.map(
    (r) => r.id,
  );

const taskOf = async (id: string) =>
  (await db.pool.query("select state, attempt from holdfast.tasks where id = $1", [id])).rows[0];

beforeAll(async () => {
  db = await freshDatabase();
  for (const kind of ["k1", "k2", "k3"])
    await db.pool.query("select holdfast.define_kind($1)", [kind]);
});

afterAll(async () => {
  await db.drop();
});

it("a live backend that no longer holds the key's lock (DISCARD ALL) is no holder: orphaned, swept, its report rejected", async () => {
  const holder = await session();
  const sweeper = await session();
  const reporter = await session();
  const a = await enqueueAndClaim(holder, "k1", "pooled:a");
  const b = await enqueueAndClaim(holder, "k1", "pooled:b");
  expect(await orphanIds()).toEqual([]);
  expect((await sweeper.query("select holdfast.sweep() as n")).rows[0].n).toBe(0);

  // What a session pooler runs on the backend of a client that went away.
  await holder.query("discard all");
  expect(await orphanIds()).toEqual([a.id, b.id]);

  // A report for that (alive) holder is rejected: it no longer holds the key.
  const report = await reporter.query(
    "select id::text, status from holdfast.complete_held($1, $2, $3)",
    [[a.id], [a.fence], await pidOf(holder)],
  );
  expect(report.rows).toEqual([{ id: a.id, status: "rejected" }]);
  expect((await taskOf(a.id)).state).toBe("running");

  expect((await sweeper.query("select holdfast.sweep() as n")).rows[0].n).toBe(2);
  expect(await taskOf(a.id)).toEqual({ state: "pending", attempt: 1 });
  expect(await taskOf(b.id)).toEqual({ state: "pending", attempt: 1 });
  const { rows: lost } = await db.pool.query(
    "select task_id::text, outcome from holdfast.attempts where task_id = any ($1) order by task_id",
    [[a.id, b.id]],
  );
  expect(lost).toEqual([
    { task_id: a.id, outcome: "lost" },
    { task_id: b.id, outcome: "lost" },
  ]);
  expect(await orphanIds()).toEqual([]);
});

it("the backend handed to a new client sweeps the previous client's orphan (a re-entrant try-lock would not tell)", async () => {
  const backend = await session();
  const t = await enqueueAndClaim(backend, "k2", "pooled:c");
  await backend.query("discard all"); // the first client died; the pooler reset the backend
  expect(await orphanIds()).toEqual([t.id]);
  // The next client of that backend leads the sweep: the orphan is recorded under its pid.
  expect((await backend.query("select holdfast.sweep() as n")).rows[0].n).toBe(1);
  expect(await taskOf(t.id)).toEqual({ state: "pending", attempt: 1 });
  // And it can claim it again, as attempt 2, its lock held this time.
  const again = await backend.query("select id, attempt from holdfast.claim(array['k2'], 'w')");
  expect(again.rows).toEqual([{ id: t.id, attempt: 2 }]);
  expect(await orphanIds()).toEqual([]);
  expect((await backend.query("select holdfast.sweep() as n")).rows[0].n).toBe(0);
  expect(
    (
      await backend.query("select holdfast.complete($1, $2) as ok", [
        t.id,
        (
          await db.pool.query("select fence from holdfast.tasks where id = $1", [t.id])
        ).rows[0].fence,
      ])
    ).rows[0].ok,
  ).toBe(true);
});

it("a holder that still holds its lock is never an orphan, whatever else its session did", async () => {
  const holder = await session();
  const t = await enqueueAndClaim(holder, "k3", "pooled:d");
  // Locks of other keys come and go on the holder's session; the task's key stays held.
  await holder.query("select pg_advisory_lock(42), pg_advisory_unlock(42)");
  await holder.query("reset all");
  expect(await orphanIds()).toEqual([]);
  const sweeper = await session();
  expect((await sweeper.query("select holdfast.sweep() as n")).rows[0].n).toBe(0);
  expect((await holder.query("select holdfast.sweep() as n")).rows[0].n).toBe(0);
  expect((await taskOf(t.id)).state).toBe("running");
  const reporter = await session();
  const report = await reporter.query(
    "select id::text, status from holdfast.complete_held($1, $2, $3)",
    [[t.id], [t.fence], await pidOf(holder)],
  );
  expect(report.rows).toEqual([]);
  expect((await taskOf(t.id)).state).toBe("succeeded");
});
