import { readFile, writeFile } from "node:fs/promises";
import { afterAll, beforeAll, expect, it } from "vitest";
import { freshDatabase, type TestDatabase } from "./support/db.js";

// Every schema change shows up in review as a diff of test/schema.snapshot.sql.
// After an intended change: UPDATE_SCHEMA_SNAPSHOT=1 npx vitest run test/schema.test.ts
const snapshotFile = new URL("./schema.snapshot.sql", import.meta.url);
let db: TestDatabase;

beforeAll(async () => {
  db = await freshDatabase();
});

afterAll(async () => {
  await db.drop();
});

async function dumpSchema(): Promise<string> {
  const { rows } = await db.pool.query<{ part: string }>(`
    select format('table %s (%s);', c.relname, string_agg(
      format('%s %s%s%s', a.attname, format_type(a.atttypid, a.atttypmod),
        case when a.attnotnull then ' not null' else '' end,
        coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')), ', ' order by a.attnum)) as part
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
    left join pg_attrdef d on d.adrelid = c.oid and d.adnum = a.attnum
    where n.nspname = 'holdfast' and c.relkind = 'r'
    group by c.relname
    union all
    select format('constraint %s on %s: %s;', con.conname, c.relname, pg_get_constraintdef(con.oid))
    from pg_constraint con join pg_class c on c.oid = con.conrelid join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = 'holdfast'
    union all
    select indexdef || ';' from pg_indexes where schemaname = 'holdfast'
    union all
    select format('view %s as %s', c.relname, pg_get_viewdef(c.oid))
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = 'holdfast' and c.relkind = 'v'
    union all
    select pg_get_functiondef(p.oid) || ';'
    from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'holdfast'
    order by 1`);
  return `${rows.map((r) => r.part.trim()).join("\n\n")}\n`;
}

it("the migrated schema matches test/schema.snapshot.sql", async () => {
  const actual = await dumpSchema();
  if (process.env.UPDATE_SCHEMA_SNAPSHOT === "1") await writeFile(snapshotFile, actual);
  const expected = await readFile(snapshotFile, "utf8").catch(() => "");
  expect(actual).toBe(expected);
});
