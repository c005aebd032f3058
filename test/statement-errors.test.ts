import { afterAll, beforeAll, expect, it } from "vitest";
import { isStatementError, LockSession } from "../src/worker/lock-session.js";
import { freshDatabase, type TestDatabase } from "./support/db.js";

let db: TestDatabase;
beforeAll(async () => {
  db = await freshDatabase({ migrate: false });
});
afterAll(async () => {
  await db?.drop();
});

it("a prepared statement whose result type a migration changed is prepared again, on the same session", async () => {
  await db.pool.query("create table t (a int); insert into t values (1)");
  const session = new LockSession({ connectionString: db.url }, "holdfast:lock:test");
  await session.connect();
  try {
    const pid = await session.pid;
    const text = "select * from t";
    expect(await session.query(text)).toEqual([{ a: 1 }]);
    // The named statement's result type changes under it: Postgres refuses it (0A000).
    await db.pool.query("alter table t add column b int");
    expect(await session.query(text)).toEqual([{ a: 1, b: null }]);
    expect(await session.query(text)).toEqual([{ a: 1, b: null }]);
    expect(session.isLost).toBe(false);
    expect((await session.query<{ pid: number }>("select pg_backend_pid() as pid"))[0]?.pid).toBe(
      pid,
    );
    // Other statement errors are the caller's to handle; the session stays.
    const err = await session.query("select 1 / 0").catch((e: unknown) => e);
    expect(isStatementError(err)).toBe(true);
    expect(session.isLost).toBe(false);
  } finally {
    await session.close();
  }
});

it("a terminated session is not a statement error", async () => {
  const session = new LockSession({ connectionString: db.url }, "holdfast:lock:test2");
  await session.connect();
  const pid = await session.pid;
  const lost = new Promise((resolve) => session.once("lost", resolve));
  await db.pool.query("select pg_terminate_backend($1)", [pid]);
  const err = await session.query("select 1").catch((e: unknown) => e);
  await lost;
  expect(isStatementError(err)).toBe(false);
  await session.close();
});

it("a read-only server (a standby behind an endpoint not yet switched) is not a statement error: a new session follows the endpoint", async () => {
  const c = await db.session();
  // What a standby answers to a claim's writes: SQLSTATE 25006.
  await c.query("begin read only");
  const err = await c.query("create table ro (a int)").catch((e: unknown) => e);
  await c.query("rollback");
  expect((err as { code?: string }).code).toBe("25006");
  expect(isStatementError(err)).toBe(false);
});
