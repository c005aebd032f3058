import { readdir } from "node:fs/promises";
import { afterAll, expect, it } from "vitest";
import { Holdfast } from "../src/index.js";
import { takeSnapshot } from "../src/inspect/snapshot.js";
import { planMigrations } from "../src/migrate.js";
import { migrateWith, nextRelease, type Release } from "./fixtures/releases.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";

const dbs: TestDatabase[] = [];
const releases: Release[] = [];
afterAll(async () => {
  await Promise.all(dbs.map((d) => d.drop()));
  await Promise.all(releases.map((r) => r.remove()));
});

async function db(migrate = true): Promise<TestDatabase> {
  const d = await freshDatabase({ migrate });
  dbs.push(d);
  return d;
}

const migrations = async () =>
  (await readdir(new URL("../sql/migrations/", import.meta.url)))
    .filter((f) => f.endsWith(".sql"))
    .sort();

it("the dry run lists every pending migration with what it locks, and changes nothing", async () => {
  const d = await db(false);
  const client = await d.session();
  const plan = await planMigrations(client);
  const names = await migrations();
  expect(plan.schemaVersion).toBeNull();
  expect(plan.releaseSchemaVersion).toBe(names.at(-1));
  expect(plan.pending.map((m) => m.name)).toEqual(names);
  expect(plan.apiUpdate).toBe(true);
  const retention = plan.pending.find((m) => m.name === "0004_retention.sql");
  expect(retention?.locks).toContain(
    "holdfast.tasks: SHARE (create index: writes wait for the build)",
  );
  const { rows } = await client.query("select to_regclass('holdfast.migrations') as t");
  expect(rows[0].t).toBeNull();
  const hf = new Holdfast({ connectionString: d.url, logger: silent });
  await hf.migrate();
  await hf.close();
  expect(await planMigrations(client)).toMatchObject({
    schemaVersion: names.at(-1),
    pending: [],
    apiUpdate: false,
  });
  // inspect (and the dashboard's header) show both versions.
  expect((await takeSnapshot(client)).versions).toEqual({
    package: (await import("../package.json", { with: { type: "json" } })).default.version,
    schema: names.at(-1),
    releaseSchema: names.at(-1),
  });
});

it("a database migrated by a newer release is refused with an error saying so, changing nothing", async () => {
  const d = await db();
  await d.pool.query("insert into holdfast.migrations (name) values ('9000_from_the_future.sql')");
  await d.pool.query("comment on schema holdfast is null"); // the API would be recreated
  const hf = new Holdfast({ connectionString: d.url, logger: silent });
  await expect(hf.migrate()).rejects.toMatchObject({
    code: "HF_MIGRATION",
    message: expect.stringMatching(/newer holdfast release.*9000_from_the_future\.sql/),
  });
  await hf.close();
  const { rows } = await d.pool.query(
    "select obj_description('holdfast'::regnamespace, 'pg_namespace') as c",
  );
  expect(rows[0].c).toBeNull();
});

it("a no-transaction migration builds its index concurrently, and resumes one an interruption left invalid", async () => {
  const next = await nextRelease(
    "9999_concurrent_index.sql",
    `-- holdfast: no-transaction
create index concurrently if not exists tasks_by_kind on holdfast.tasks (kind);
`,
  );
  releases.push(next);
  const d = await db();
  await d.pool.query("select holdfast.define_kind('job')");
  for (const key of ["a", "b"]) await d.pool.query("select holdfast.enqueue('job', $1)", [key]);
  // An interrupted build leaves an INVALID index of that name behind (here: a unique build
  // that fails on duplicates); `if not exists` alone would keep it.
  await expect(
    d.pool.query("create unique index concurrently tasks_by_kind on holdfast.tasks (kind)"),
  ).rejects.toMatchObject({ code: "23505" });
  const valid = async () =>
    (
      await d.pool.query(
        `select i.indisvalid as valid, i.indisunique as is_unique from pg_index i
         where i.indexrelid = 'holdfast.tasks_by_kind'::regclass`,
      )
    ).rows[0];
  expect(await valid()).toEqual({ valid: false, is_unique: true });
  await migrateWith(next, d.url);
  expect(await valid()).toEqual({ valid: true, is_unique: false });
  const { rows } = await d.pool.query("select max(name) as v from holdfast.migrations");
  expect(rows[0].v).toBe("9999_concurrent_index.sql");
});
