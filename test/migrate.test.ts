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

it("ten concurrent migrate() calls apply each file exactly once", async () => {
  const files = (await readdir(new URL("../sql/", import.meta.url)))
    .filter((f) => f.endsWith(".sql"))
    .sort();
  const instances = Array.from(
    { length: 10 },
    () => new Holdfast({ connectionString: db.url, logger: silent }),
  );
  const results = await Promise.all(instances.map((hf) => hf.migrate()));
  await Promise.all(instances.map((hf) => hf.close()));
  const applied = results.flatMap((r) => r.applied);
  expect(applied.sort()).toEqual(files);
  const { rows } = await db.pool.query("select name from holdfast.migrations order by name");
  expect(rows.map((r) => r.name)).toEqual(files);
  // A later call has nothing to do.
  const again = new Holdfast({ connectionString: db.url, logger: silent });
  expect((await again.migrate()).applied).toEqual([]);
  await again.close();
});
