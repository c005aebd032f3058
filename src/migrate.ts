import { createHash } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import type pg from "pg";
import type { Logger } from "pino";
import { Umzug } from "umzug";
import { MigrationError } from "./errors.js";

const migrationsDir = new URL("../sql/migrations/", import.meta.url);
const apiDir = new URL("../sql/api/", import.meta.url);
/** Two-int advisory key of the migration lock (apart from the keys' bigint lock ids). */
const migrationLock = [1752132708, 0] as const;

/**
 * The files of holdfast 0.1.0, which kept functions inside migrations. A database with all of
 * them has exactly the tables of migrations/0001_baseline.sql.
 */
export const legacyFiles = [
  "0001_schema.sql",
  "0002_enqueue.sql",
  "0003_claim.sql",
  "0004_finish.sql",
  "0005_sweep.sql",
  "0006_roles.sql",
  "0007_settle.sql",
  "0008_set_based.sql",
];
const baseline = "0001_baseline.sql";

export interface MigrateResult {
  /** Versioned migrations applied by this call (empty when another process had applied them). */
  applied: string[];
  /** Whether this call (re)created the API functions and views from sql/api/. */
  apiUpdated: boolean;
}

interface SqlFile {
  name: string;
  text: string;
}

async function readSqlFiles(dir: URL): Promise<SqlFile[]> {
  const names = (await readdir(dir)).filter((f) => f.endsWith(".sql")).sort();
  return Promise.all(
    names.map(async (name) => ({ name, text: await readFile(new URL(name, dir), "utf8") })),
  );
}

/** Identifies the API files' content; kept as the comment of schema holdfast. */
function checksum(files: SqlFile[]): string {
  const h = createHash("sha256");
  for (const f of files) h.update(`${f.name}\0${f.text}\0`);
  return `holdfast api sha256:${h.digest("hex")}`;
}

/**
 * Brings the schema up to date under an advisory lock, in one transaction: many processes
 * starting at once migrate once, and a failure changes nothing.
 *
 * 1. Versioned migrations (sql/migrations/: tables, indexes, data), each once, in name order.
 * 2. The API (sql/api/: every function, view and grant, each defined once) is dropped and
 *    created again from the current files, unless its checksum is already the one recorded.
 */
export async function migrate(client: pg.ClientBase, logger: Logger): Promise<MigrateResult> {
  const [migrations, api] = await Promise.all([readSqlFiles(migrationsDir), readSqlFiles(apiDir)]);
  const apiChecksum = checksum(api);
  await client.query("select pg_advisory_lock($1, $2)", [...migrationLock]);
  try {
    await client.query("begin");
    try {
      const result = await migrateLocked(client, logger, migrations, api, apiChecksum);
      await client.query("commit");
      if (result.applied.length > 0 || result.apiUpdated) {
        logger.info({ event: "migrate", ...result }, "holdfast: schema migrated");
      }
      return result;
    } catch (err) {
      await client.query("rollback");
      throw err;
    }
  } finally {
    await client.query("select pg_advisory_unlock($1, $2)", [...migrationLock]);
  }
}

async function migrateLocked(
  client: pg.ClientBase,
  logger: Logger,
  migrations: SqlFile[],
  api: SqlFile[],
  apiChecksum: string,
): Promise<MigrateResult> {
  await client.query(`create schema if not exists holdfast;
    create table if not exists holdfast.migrations (
      name text primary key, applied_at timestamptz not null default now())`);
  await adoptLegacy(client, logger);
  const current = await client.query<{ comment: string | null }>(
    "select obj_description('holdfast'::regnamespace, 'pg_namespace') as comment",
  );
  const umzug = new Umzug({
    migrations: migrations.map(({ name, text }) => ({
      name,
      up: async () => {
        await client.query(text);
        await client.query("insert into holdfast.migrations (name) values ($1)", [name]);
      },
    })),
    storage: {
      executed: async () =>
        (
          await client.query<{ name: string }>("select name from holdfast.migrations order by name")
        ).rows.map((r) => r.name),
      // Recorded by `up`, in the same transaction.
      logMigration: async () => {},
      unlogMigration: async ({ name }) => {
        await client.query("delete from holdfast.migrations where name = $1", [name]);
      },
    },
    logger: undefined,
  });
  const pending = await umzug.pending();
  const apiUpdated = pending.length > 0 || current.rows[0]?.comment !== apiChecksum;
  if (!apiUpdated) return { applied: [], apiUpdated };

  // The API goes first: a migration may change a table that a view or function reads.
  await dropApi(client);
  const applied = (await umzug.up()).map((m) => m.name);
  for (const f of api) {
    try {
      await client.query(f.text);
    } catch (err) {
      throw new MigrationError(`holdfast: sql/api/${f.name} failed: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }
  await client.query(`comment on schema holdfast is '${apiChecksum}'`);
  return { applied, apiUpdated };
}

/**
 * A database migrated by holdfast 0.1.0 has the baseline's tables: record the baseline as
 * applied in place of the old file names. Its functions are replaced with the API below.
 */
async function adoptLegacy(client: pg.ClientBase, logger: Logger): Promise<void> {
  const { rows } = await client.query<{ name: string }>(
    "select name from holdfast.migrations where name = any ($1)",
    [legacyFiles],
  );
  if (rows.length === 0) return;
  if (rows.length !== legacyFiles.length) {
    throw new MigrationError(
      `holdfast: this database has only ${rows.length} of holdfast 0.1.0's ${legacyFiles.length} migrations; migrate it with holdfast 0.1.0 first`,
    );
  }
  await client.query("delete from holdfast.migrations where name = any ($1)", [legacyFiles]);
  await client.query("insert into holdfast.migrations (name) values ($1)", [baseline]);
  logger.info(
    { event: "migrate_adopt_legacy" },
    "holdfast: adopted a 0.1.0 schema as the baseline",
  );
}

/**
 * Drops every function and view of schema holdfast and the roles' grants on its tables (not
 * the tables and data): what sql/api/ no longer declares is gone after the upgrade.
 */
async function dropApi(client: pg.ClientBase): Promise<void> {
  const { rows } = await client.query<{ views: string | null; functions: string | null }>(`
    select
      (select string_agg(c.oid::regclass::text, ', ') from pg_class c
       where c.relnamespace = 'holdfast'::regnamespace and c.relkind = 'v') as views,
      (select string_agg(p.oid::regprocedure::text, ', ') from pg_proc p
       where p.pronamespace = 'holdfast'::regnamespace) as functions`);
  const { views, functions } = rows[0] ?? {};
  if (views) await client.query(`drop view ${views}`);
  if (functions) await client.query(`drop function ${functions}`);
  await client.query(`do $$
    declare r text;
    begin
      for r in select rolname from pg_roles
               where rolname in ('holdfast_producer', 'holdfast_worker', 'holdfast_observer') loop
        execute format('revoke all on all tables in schema holdfast from %I', r);
      end loop;
    end $$`);
}
