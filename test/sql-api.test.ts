import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freshDatabase, type TestDatabase } from "./support/db.js";

let db: TestDatabase;
const clients: pg.Client[] = [];

async function session(): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  clients.push(c);
  return c;
}

async function heldLocks(c: pg.Client): Promise<number> {
  const { rows } = await c.query(
    "select count(*)::int as n from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()",
  );
  return rows[0].n;
}

beforeAll(async () => {
  db = await freshDatabase();
  await db.pool.query("select holdfast.define_kind('job')");
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.end()));
  await db.drop();
});

describe("SQL API", () => {
  it("claim on an empty queue returns nothing and holds no lock", async () => {
    const c = await session();
    const { rows } = await c.query("select * from holdfast.claim(array['job'], 'w1', 5)");
    expect(rows).toEqual([]);
    expect(await heldLocks(c)).toBe(0);
  });

  it("runs the whole lifecycle from SQL: enqueue, claim, complete", async () => {
    const c = await session();
    const { rows: e } = await c.query(
      "select holdfast.enqueue('job', 'k:life', '{\"n\":1}') as id",
    );
    const id = e[0].id;
    const { rows } = await c.query("select * from holdfast.claim(array['job'], 'w1')");
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({
      id,
      key: "k:life",
      state: "running",
      attempt: 1,
      payload: { n: 1 },
    });
    const { rows: held } = await c.query("select * from holdfast.locks where key = 'k:life'");
    expect(held).toHaveLength(1);
    expect(held[0]).toMatchObject({ granted: true, task_id: id });

    const other = await session();
    const { rows: none } = await other.query("select * from holdfast.claim(array['job'], 'w2')");
    expect(none).toEqual([]);

    const { rows: done } = await c.query("select holdfast.complete($1, $2) as ok", [
      id,
      rows[0].fence,
    ]);
    expect(done[0].ok).toBe(true);
    expect(await heldLocks(c)).toBe(0);
    const { rows: t } = await c.query("select state from holdfast.tasks where id = $1", [id]);
    expect(t[0].state).toBe("succeeded");
  });

  it("a second claim by the holding session does not re-take a key it holds (re-entrancy)", async () => {
    const c = await session();
    await c.query("select holdfast.enqueue('job', 'k:reent'), holdfast.enqueue('job', 'k:reent')");
    const first = await c.query("select * from holdfast.claim(array['job'], 'w1')");
    expect(first.rows).toHaveLength(1);
    const second = await c.query("select * from holdfast.claim(array['job'], 'w1')");
    expect(second.rows).toEqual([]);
    expect(await heldLocks(c)).toBe(1);
    await c.query("select holdfast.complete($1, $2)", [first.rows[0].id, first.rows[0].fence]);
    const third = await c.query("select * from holdfast.claim(array['job'], 'w1')");
    expect(third.rows).toHaveLength(1);
    expect(Number(third.rows[0].id)).toBeGreaterThan(Number(first.rows[0].id));
    expect(Number(third.rows[0].fence)).toBeGreaterThan(Number(first.rows[0].fence));
    await c.query("select holdfast.complete($1, $2)", [third.rows[0].id, third.rows[0].fence]);
    expect(await heldLocks(c)).toBe(0);
  });

  it("complete with a stale fence is rejected and changes nothing", async () => {
    const c = await session();
    await c.query("select holdfast.enqueue('job', 'k:stale')");
    const { rows } = await c.query("select * from holdfast.claim(array['job'], 'w1')");
    const { rows: r } = await c.query("select holdfast.complete($1, $2) as ok", [
      rows[0].id,
      Number(rows[0].fence) - 1,
    ]);
    expect(r[0].ok).toBe(false);
    const { rows: t } = await c.query("select state from holdfast.tasks where id = $1", [
      rows[0].id,
    ]);
    expect(t[0].state).toBe("running");
    await c.query("select holdfast.complete($1, $2)", [rows[0].id, rows[0].fence]);
  });

  it("rejects bad input with typed SQLSTATEs and writes nothing", async () => {
    const c = await session();
    const before = (await c.query("select count(*)::int n from holdfast.tasks")).rows[0].n;
    await expect(c.query("select holdfast.enqueue('nope', 'k')")).rejects.toMatchObject({
      code: "HF001",
    });
    await expect(c.query("select holdfast.enqueue('job', '')")).rejects.toMatchObject({
      code: "HF002",
    });
    await expect(c.query("select holdfast.enqueue('job', 'k', 'not json')")).rejects.toMatchObject({
      code: "22P02",
    });
    await expect(
      c.query("select holdfast.enqueue('job', 'k', max_attempts => 0)"),
    ).rejects.toMatchObject({ code: "HF002" });
    await expect(c.query("select holdfast.complete(987654321, 1)")).rejects.toMatchObject({
      code: "HF003",
    });
    const after = (await c.query("select count(*)::int n from holdfast.tasks")).rows[0].n;
    expect(after).toBe(before);
  });
});
