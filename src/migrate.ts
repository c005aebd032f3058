import { readdir, readFile } from "node:fs/promises";
import type pg from "pg";
import type { Logger } from "pino";
import { Umzug } from "umzug";

const sqlDir = new URL("../sql/", import.meta.url);
/** Two-int advisory key of the migration lock (apart from the keys' bigint lock ids). */
const migrationLock = [1752132708, 0] as const;

export interface MigrateResult {
  /** Files applied by this call (empty when another process had already applied them). */
  applied: string[];
}

/**
 * Applies the files of sql/ in name order, each in its own transaction together with its row
 * in holdfast.migrations, under an advisory lock: many workers starting at once migrate once.
 */
export async function migrate(client: pg.ClientBase, logger: Logger): Promise<MigrateResult> {
  const files = (await readdir(sqlDir)).filter((f) => f.endsWith(".sql")).sort();
  await client.query("select pg_advisory_lock($1, $2)", [...migrationLock]);
  try {
    await client.query(`create schema if not exists holdfast;
      create table if not exists holdfast.migrations (
        name text primary key, applied_at timestamptz not null default now())`);
    const umzug = new Umzug({
      migrations: files.map((name) => ({
        name,
        up: async () => {
          const text = await readFile(new URL(name, sqlDir), "utf8");
          await client.query("begin");
          try {
            await client.query(text);
            await client.query("insert into holdfast.migrations (name) values ($1)", [name]);
            await client.query("commit");
          } catch (err) {
            await client.query("rollback");
            throw err;
          }
        },
      })),
      storage: {
        executed: async () =>
          (
            await client.query<{ name: string }>(
              "select name from holdfast.migrations order by name",
            )
          ).rows.map((r) => r.name),
        // Recorded by `up` in the migration's own transaction.
        logMigration: async () => {},
        unlogMigration: async ({ name }) => {
          await client.query("delete from holdfast.migrations where name = $1", [name]);
        },
      },
      logger: undefined,
    });
    const applied = (await umzug.up()).map((m) => m.name);
    if (applied.length > 0) logger.info({ event: "migrate", applied }, "holdfast: schema migrated");
    return { applied };
  } finally {
    await client.query("select pg_advisory_unlock($1, $2)", [...migrationLock]);
  }
}
