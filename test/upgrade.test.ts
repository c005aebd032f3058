import { execFileSync } from "node:child_process";
import { readdir } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Holdfast } from "../src/index.js";
import { legacyFiles } from "../src/migrate.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";
import { describeSchema } from "./support/schema.js";

// A database migrated by holdfast 0.1.0 (sql/0001..0008, functions inside migrations) upgrades
// to the sql/migrations + sql/api layout in place. The 0.1.0 files are read from this repo's
// history, so the test needs a clone with history (CI's clone has it).
const release010 = "b47662a";
const repo = fileURLToPath(new URL("..", import.meta.url));

let fresh: TestDatabase;
let old: TestDatabase;
const clients: pg.Client[] = [];

async function session(url: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  clients.push(c);
  return c;
}

/** Migrates as holdfast 0.1.0 did: each file in its own transaction with its row. */
async function migrateAs010(url: string): Promise<void> {
  const c = await session(url);
  await c.query(`create schema if not exists holdfast;
    create table if not exists holdfast.migrations (
      name text primary key, applied_at timestamptz not null default now())`);
  for (const name of legacyFiles) {
    const text = execFileSync("git", ["-C", repo, "show", `${release010}:sql/${name}`], {
      encoding: "utf8",
    });
    await c.query("begin");
    await c.query(text);
    await c.query("insert into holdfast.migrations (name) values ($1)", [name]);
    await c.query("commit");
  }
}

beforeAll(async () => {
  [fresh, old] = await Promise.all([freshDatabase(), freshDatabase({ migrate: false })]);
  await migrateAs010(old.url);
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.end()));
  await Promise.all([fresh?.drop(), old?.drop()]);
});

it("a 0.1.0 database upgrades with its tasks, a held lock and its grants, to the fresh schema", async () => {
  const producer = await session(old.url);
  await producer.query("select holdfast.define_kind('job')");
  const ids: number[] = [];
  for (const key of ["a", "a", "b", "c"]) {
    const { rows } = await producer.query("select holdfast.enqueue('job', $1, '{}') as id", [key]);
    ids.push(Number(rows[0].id));
  }
  // A 0.1.0 worker session holds key a's lock through the upgrade.
  const worker010 = await session(old.url);
  const { rows: claimed } = await worker010.query(
    "select id, key, fence from holdfast.claim(array['job'], 'w-0.1.0', 1)",
  );
  expect(claimed).toHaveLength(1);
  const running = claimed[0];
  const { rows: b } = await worker010.query(
    "select id, fence from holdfast.claim(array['job'], 'w-0.1.0', 1)",
  );
  const { rows: bDone } = await worker010.query("select holdfast.complete($1, $2) as ok", [
    b[0].id,
    b[0].fence,
  ]);
  expect(bDone[0].ok).toBe(true);

  const migrations = (await readdir(new URL("../sql/migrations/", import.meta.url))).sort();
  const hf = new Holdfast({ connectionString: old.url, logger: silent });
  expect(await hf.migrate()).toEqual({
    applied: migrations.filter((f) => f !== "0001_baseline.sql"),
    apiUpdated: true,
  });
  expect(await hf.migrate()).toEqual({ applied: [], apiUpdated: false });

  // The same schema as a fresh database, grants and security attributes included.
  expect(await describeSchema(old.pool)).toBe(await describeSchema(fresh.pool));
  const { rows: names } = await old.pool.query("select name from holdfast.migrations");
  expect(names.map((r) => r.name).sort()).toEqual(migrations);

  // The lock taken before the upgrade is still held, and its run completes with its fence.
  const { rows: held } = await old.pool.query(
    "select count(*)::int as n from pg_locks where locktype = 'advisory' and pid = $1 and granted",
    [(await worker010.query("select pg_backend_pid() as pid")).rows[0].pid],
  );
  expect(held[0].n).toBe(1);
  const { rows: done } = await worker010.query("select holdfast.complete($1, $2) as ok", [
    running.id,
    running.fence,
  ]);
  expect(done[0].ok).toBe(true);

  // Every task enqueued before the upgrade runs to completion on the new API.
  const runner = await session(old.url);
  for (;;) {
    const { rows } = await runner.query(
      "select id, fence from holdfast.claim(array['job'], 'w-new', 10)",
    );
    if (rows.length === 0) break;
    for (const r of rows) await runner.query("select holdfast.complete($1, $2)", [r.id, r.fence]);
  }
  const { rows: states } = await old.pool.query(
    "select id::int, state from holdfast.tasks order by id",
  );
  expect(states).toEqual(ids.map((id) => ({ id, state: "succeeded" })));
  // A kind from before retention has the defaults (docs/retention.md, docs/upgrading.md).
  const { rows: kinds } = await old.pool.query(
    "select retain_succeeded::text as s, retain_cancelled::text as c, retain_failed::text as f from holdfast.kinds",
  );
  expect(kinds).toEqual([{ s: "1 day", c: "7 days", f: "30 days" }]);
});

it("a database with only part of 0.1.0's migrations is refused, changing nothing", async () => {
  const partial = await freshDatabase({ migrate: false });
  try {
    const c = await session(partial.url);
    await c.query(`create schema holdfast;
      create table holdfast.migrations (name text primary key, applied_at timestamptz not null default now());
      insert into holdfast.migrations (name) values ('0001_schema.sql')`);
    const hf = new Holdfast({ connectionString: partial.url, logger: silent });
    await expect(hf.migrate()).rejects.toMatchObject({ code: "HF_MIGRATION" });
    await hf.close();
    const { rows } = await c.query("select name from holdfast.migrations");
    expect(rows.map((r) => r.name)).toEqual(["0001_schema.sql"]);
    await c.end();
    clients.splice(clients.indexOf(c), 1);
  } finally {
    await partial.drop();
  }
});
