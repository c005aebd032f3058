import { readFile, writeFile } from "node:fs/promises";
import { afterAll, beforeAll, expect, it } from "vitest";
import { freshDatabase, type TestDatabase } from "./support/db.js";
import { describeSchema } from "./support/schema.js";

// Every schema change shows up in review as a diff of test/schema.snapshot.txt, and the facts
// compared read the same on every supported major (test:versions runs this file on each).
// After an intended change: npm run schema:snapshot
const snapshotFile = new URL("./schema.snapshot.txt", import.meta.url);
let db: TestDatabase;

beforeAll(async () => {
  db = await freshDatabase();
});

afterAll(async () => {
  await db.drop();
});

it("the migrated schema matches test/schema.snapshot.txt", async () => {
  const actual = await describeSchema(db.pool);
  if (process.env.UPDATE_SCHEMA_SNAPSHOT === "1") await writeFile(snapshotFile, actual);
  const expected = await readFile(snapshotFile, "utf8").catch(() => "");
  expect(actual).toBe(expected);
});
