import { readdir } from "node:fs/promises";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Holdfast } from "../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";

let db: TestDatabase;

beforeAll(async () => {
  db = await freshDatabase({ migrate: false });
});

afterAll(async () => {
  await db.drop();
});

it("ten concurrent migrate() calls apply each migration and the API exactly once", async () => {
  const files = (await readdir(new URL("../sql/migrations/", import.meta.url)))
    .filter((f) => f.endsWith(".sql"))
    .sort();
  const instances = Array.from(
    { length: 10 },
    () => new Holdfast({ connectionString: db.url, logger: silent }),
  );
  const results = await Promise.all(instances.map((hf) => hf.migrate()));
  await Promise.all(instances.map((hf) => hf.close()));
  expect(results.flatMap((r) => r.applied).sort()).toEqual(files);
  expect(results.filter((r) => r.apiUpdated)).toHaveLength(1);
  const { rows } = await db.pool.query("select name from holdfast.migrations order by name");
  expect(rows.map((r) => r.name)).toEqual(files);
  // A later call has nothing to do: same migrations, same API checksum.
  const again = new Holdfast({ connectionString: db.url, logger: silent });
  expect(await again.migrate()).toEqual({ applied: [], apiUpdated: false });
  await again.close();
});

it("a changed API is recreated: a function dropped by hand comes back", async () => {
  await db.pool.query(
    "drop function holdfast.cancel(bigint); comment on schema holdfast is 'changed'",
  );
  const hf = new Holdfast({ connectionString: db.url, logger: silent });
  expect(await hf.migrate()).toEqual({ applied: [], apiUpdated: true });
  await hf.close();
  const { rows } = await db.pool.query(
    "select to_regprocedure('holdfast.cancel(bigint)') is not null as present",
  );
  expect(rows[0].present).toBe(true);
});
