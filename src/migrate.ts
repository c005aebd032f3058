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

/** A pending migration as `holdfast migrate --dry-run` lists it. */
export interface PendingMigration {
  name: string;
  /** false: run outside a transaction (`-- holdfast: no-transaction`, for CREATE INDEX
   *  CONCURRENTLY), one statement at a time, resumed after an interruption. */
  transaction: boolean;
  /** What each statement locks, read from the file (e.g. "holdfast.tasks: SHARE (create
   *  index: writes wait for the build)"). */
  locks: string[];
}

/** What `migrate()` would do now, and the versions on each side. */
export interface MigrationPlan {
  /** This package's version. */
  packageVersion: string;
  /** The database's schema version: its last applied migration (null: none). */
  schemaVersion: string | null;
  /** This release's last migration. */
  releaseSchemaVersion: string;
  pending: PendingMigration[];
  /** Whether the API functions and views would be dropped and created again. */
  apiUpdate: boolean;
}

interface SqlFile {
  name: string;
  text: string;
}

interface Migration extends SqlFile {
  transaction: boolean;
}

/** The header line that runs a migration outside the migration's transaction. */
const noTransaction = /^--\s*holdfast:\s*no-transaction\s*$/m;

async function readSqlFiles(dir: URL): Promise<SqlFile[]> {
  const names = (await readdir(dir)).filter((f) => f.endsWith(".sql")).sort();
  return Promise.all(
    names.map(async (name) => ({ name, text: await readFile(new URL(name, dir), "utf8") })),
  );
}

async function readMigrations(): Promise<Migration[]> {
  return (await readSqlFiles(migrationsDir)).map((f) => ({
    ...f,
    transaction: !noTransaction.test(f.text),
  }));
}

/** This package's version (package.json, one level above src/ and dist/). */
export async function packageVersion(): Promise<string> {
  const pkg = JSON.parse(await readFile(new URL("../package.json", import.meta.url), "utf8"));
  return String(pkg.version);
}

/** The last migration this package ships. */
export async function releaseSchemaVersion(): Promise<string> {
  return (
    (await readdir(migrationsDir))
      .filter((f) => f.endsWith(".sql"))
      .sort()
      .at(-1) ?? ""
  );
}

/** The database's schema version: the last migration applied. */
export const schemaVersionSql = "select max(name) as name from holdfast.migrations";

/** Identifies the API files' content; kept as the comment of schema holdfast. */
function checksum(files: SqlFile[]): string {
  const h = createHash("sha256");
  for (const f of files) h.update(`${f.name}\0${f.text}\0`);
  return `holdfast api sha256:${h.digest("hex")}`;
}

/** The statements of a migration, without comments (for what they lock and for running a
 *  no-transaction migration one statement at a time). */
function statements(text: string): string[] {
  return text
    .replace(/--.*$/gm, "")
    .split(/;\s*$/m)
    .map((st) => st.trim())
    .filter((st) => st.length > 0);
}

/** What a migration's statements lock, as far as its text says (the usual DDL and DML). */
export function describeLocks(text: string): string[] {
  const id = '([\\w."]+)';
  const rules: Array<[RegExp, (m: RegExpMatchArray) => string]> = [
    [
      // Storage parameters alone (fillfactor, autovacuum_*) take the weaker lock.
      new RegExp(`^alter table (?:if exists )?(?:only )?${id} set \\([^;]*\\)$`, "i"),
      (m) => `${m[1]}: SHARE UPDATE EXCLUSIVE (storage parameters: reads and writes go on)`,
    ],
    [
      new RegExp(`^alter table (?:if exists )?(?:only )?${id}`, "i"),
      (m) => `${m[1]}: ACCESS EXCLUSIVE (alter table: reads and writes wait)`,
    ],
    [
      new RegExp(
        `^create (?:unique )?index concurrently (?:if not exists )?(?:${id} )?on (?:only )?${id}`,
        "i",
      ),
      (m) => `${m[2]}: SHARE UPDATE EXCLUSIVE (create index concurrently: reads and writes go on)`,
    ],
    [
      new RegExp(`^create (?:unique )?index (?:if not exists )?(?:${id} )?on (?:only )?${id}`, "i"),
      (m) => `${m[2]}: SHARE (create index: writes wait for the build)`,
    ],
    [
      new RegExp(`^drop index concurrently (?:if exists )?${id}`, "i"),
      (m) => `${m[1]}'s table: SHARE UPDATE EXCLUSIVE (drop index concurrently)`,
    ],
    [
      new RegExp(`^drop index (?:if exists )?${id}`, "i"),
      (m) => `${m[1]}'s table: ACCESS EXCLUSIVE (drop index: brief)`,
    ],
    [
      new RegExp(`^update (?:only )?${id}`, "i"),
      (m) => `${m[1]}: ROW EXCLUSIVE, the rows it updates`,
    ],
    [new RegExp(`^insert into ${id}`, "i"), (m) => `${m[1]}: ROW EXCLUSIVE (insert)`],
    [
      new RegExp(`^delete from (?:only )?${id}`, "i"),
      (m) => `${m[1]}: ROW EXCLUSIVE, the rows it deletes`,
    ],
    [new RegExp(`^create table (?:if not exists )?${id}`, "i"), (m) => `${m[1]}: new table`],
  ];
  const out: string[] = [];
  for (const st of statements(text)) {
    const flat = st.replace(/\s+/g, " ");
    for (const [re, say] of rules) {
      const m = flat.match(re);
      if (m) {
        out.push(say(m));
        break;
      }
    }
  }
  return out;
}

/** The last migration of the release that the deployed workers of 25540ad (0.2) shipped with:
 *  workers of a schema before it (0.1.x, e.g. b13de11) expand `(s.task).*` into fewer columns
 *  than holdfast.tasks has since, and must be stopped before migrating (docs/upgrading.md). */
const rollingFrom = "0005_checkpoints.sql";

/** Reads what migrate would do, without changing anything. */
export async function planMigrations(client: pg.ClientBase): Promise<MigrationPlan> {
  const [migrations, api] = await Promise.all([readMigrations(), readSqlFiles(apiDir)]);
  const { rows } = await client.query<{ migrated: boolean; comment: string | null }>(
    `select to_regclass('holdfast.migrations') is not null as migrated,
     (select obj_description(oid, 'pg_namespace') from pg_namespace where nspname = 'holdfast') as comment`,
  );
  const names = rows[0]?.migrated
    ? (await client.query<{ name: string }>("select name from holdfast.migrations")).rows
    : [];
  const executed = adoptedNames(names.map((r) => r.name));
  refuseNewer(executed, migrations);
  const pending = migrations.filter((m) => !executed.includes(m.name));
  return {
    packageVersion: await packageVersion(),
    schemaVersion: executed.at(-1) ?? null,
    releaseSchemaVersion: migrations.at(-1)?.name ?? "",
    pending: pending.map((m) => ({
      name: m.name,
      transaction: m.transaction,
      locks: describeLocks(m.text),
    })),
    apiUpdate: pending.length > 0 || rows[0]?.comment !== checksum(api),
  };
}

/** Migration names as migrate records them (0.1.0's files count as the baseline). */
function adoptedNames(names: string[]): string[] {
  const legacy = names.filter((n) => legacyFiles.includes(n));
  if (legacy.length === 0) return [...names].sort();
  return [...names.filter((n) => !legacyFiles.includes(n)), baseline].sort();
}

/** A database migrated by a newer release has migrations this one does not know. */
function refuseNewer(executed: string[], migrations: SqlFile[]): void {
  const known = new Set(migrations.map((m) => m.name));
  const unknown = executed.filter((n) => !known.has(n));
  if (unknown.length > 0)
    throw new MigrationError(
      `holdfast: this database was migrated by a newer holdfast release (migrations unknown to this release: ${unknown.join(", ")}); nothing was changed. Run the newer release's migrate, or upgrade this deployment to it.`,
    );
}

/**
 * Brings the schema up to date under an advisory lock, so many processes starting at once
 * migrate once:
 *
 * 1. Versioned migrations (sql/migrations/: tables, indexes, data), each once, in name order,
 *    in one transaction (a failure changes nothing), committed before step 2 so that no table
 *    lock is held while the API is replaced (see migrateLocked). A migration headed
 *    `-- holdfast: no-transaction` (CREATE INDEX CONCURRENTLY: it may only build indexes, and
 *    nothing may depend on them) runs outside it, after that commit, one statement at a time;
 *    an INVALID index an interrupted build left behind is dropped first, so a rerun resumes it.
 * 2. The API (sql/api/: every function, view and grant, each defined once) is dropped and
 *    created again from the current files, unless its checksum is already the one recorded.
 *
 * A database migrated by a newer release (migrations this one does not know) is refused.
 */
export async function migrate(client: pg.ClientBase, logger: Logger): Promise<MigrateResult> {
  const [migrations, api] = await Promise.all([readMigrations(), readSqlFiles(apiDir)]);
  const apiChecksum = checksum(api);
  await takeMigrationLock(client);
  try {
    const result: MigrateResult = { applied: [], apiUpdated: false };
    for (;;) {
      await client.query("begin");
      let step: Step;
      try {
        step = await migrateLocked(client, logger, migrations, api, apiChecksum);
        await client.query("commit");
      } catch (err) {
        await client.query("rollback");
        throw err;
      }
      result.applied.push(...step.applied);
      result.apiUpdated ||= step.apiUpdated;
      if (!step.next) break;
      await runOutsideTransaction(client, logger, step.next);
      result.applied.push(step.next.name);
    }
    // Reported in name order (a no-transaction migration ran after those after it).
    result.applied.sort();
    if (result.applied.length > 0 || result.apiUpdated) {
      logger.info({ event: "migrate", ...result }, "holdfast: schema migrated");
    }
    return result;
  } finally {
    await client.query("select pg_advisory_unlock($1, $2)", [...migrationLock]);
  }
}

/**
 * Waits for the migration lock between tries, not inside pg_advisory_lock: a statement waiting
 * there holds a snapshot, and a no-transaction migration's CREATE INDEX CONCURRENTLY waits for
 * every older snapshot, so the migrators waiting behind it would deadlock with it.
 */
async function takeMigrationLock(client: pg.ClientBase): Promise<void> {
  for (let waitMs = 10; ; waitMs = Math.min(waitMs * 2, 250)) {
    const { rows } = await client.query<{ ok: boolean }>(
      "select pg_try_advisory_lock($1, $2) as ok",
      [...migrationLock],
    );
    if (rows[0]?.ok) return;
    await new Promise((resolve) => setTimeout(resolve, waitMs));
  }
}

interface Step extends MigrateResult {
  /** A no-transaction migration to run now, before the ones after it. */
  next?: Migration;
}

async function migrateLocked(
  client: pg.ClientBase,
  logger: Logger,
  migrations: Migration[],
  api: SqlFile[],
  apiChecksum: string,
): Promise<Step> {
  await client.query(`create schema if not exists holdfast;
    create table if not exists holdfast.migrations (
      name text primary key, applied_at timestamptz not null default now())`);
  await adoptLegacy(client, logger);
  const executedNow = async () =>
    (
      await client.query<{ name: string }>("select name from holdfast.migrations order by name")
    ).rows.map((r) => r.name);
  const executed = await executedNow();
  refuseNewer(executed, migrations);
  const current = await client.query<{ comment: string | null }>(
    "select obj_description('holdfast'::regnamespace, 'pg_namespace') as comment",
  );
  const pending = migrations.filter((m) => !executed.includes(m.name));
  // Every transactional migration first, with the API, in one commit: the API is written for
  // this release's tables, so no commit may leave the schema between two of its migrations.
  // Then the no-transaction ones (index builds, which change nothing the API reads), one by
  // one after this commit.
  const batch = pending.filter((m) => m.transaction);
  const next = pending.find((m) => !m.transaction);
  const apiUpdated = batch.length > 0 || current.rows[0]?.comment !== apiChecksum;
  if (!apiUpdated) return { applied: [], apiUpdated, ...(next ? { next } : {}) };
  if (pending.length > 0) await warnOfOldWorkers(client, logger, executed);

  const up = async () => {
    const umzug = new Umzug({
      migrations: batch.map(({ name, text }) => ({
        name,
        up: async () => {
          await client.query(text);
          await client.query("insert into holdfast.migrations (name) values ($1)", [name]);
        },
      })),
      storage: {
        executed: executedNow,
        // Recorded by `up`, in the same transaction.
        logMigration: async () => {},
        unlogMigration: async ({ name }) => {
          await client.query("delete from holdfast.migrations where name = $1", [name]);
        },
      },
      logger: undefined,
    });
    return (await umzug.up()).map((m) => m.name);
  };
  // The tables first, committed before the API is replaced: their locks (ALTER TABLE holds
  // ACCESS EXCLUSIVE until commit) must not be held while functions are dropped, or a running
  // worker's statement waiting on such a lock would resume against a function dropped under
  // it ("cache lookup failed", and a worker of 25540ad takes that for a lost lock). Meanwhile
  // the previous API runs on the new tables, as it must for workers of the previous release.
  // Unless a view or function depends on what a migration changes: then the API goes first,
  // in the same transaction, as before.
  await client.query("savepoint tables");
  let applied: string[];
  let apiDropped = false;
  try {
    applied = await up();
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code !== "2BP01" && code !== "0A000") throw err;
    await client.query("rollback to savepoint tables");
    await dropApi(client);
    apiDropped = true;
    applied = await up();
  }
  if (!apiDropped) {
    if (applied.length > 0) {
      await client.query("commit");
      await client.query("begin");
    }
    await dropApi(client);
  }
  // From a release whose workers may be running (rollingFrom on), functions are replaced in
  // place; an older schema's functions (their workers must be stopped first) are dropped,
  // since their old signatures would stand beside the new ones and make calls ambiguous.
  await replaceApi(client, api, executed.includes(rollingFrom));
  await client.query(`comment on schema holdfast is '${apiChecksum}'`);
  return { applied, apiUpdated, ...(next ? { next } : {}) };
}

/** "Use DROP FUNCTION holdfast.f(int) first.": the hint of a CREATE OR REPLACE refused. */
const dropFirstHint = /^Use DROP FUNCTION (.+) first\.$/;

/**
 * Creates the API from sql/api/ over the one in place. Functions are replaced, not dropped and
 * created again: a function keeps its OID, so a statement of a running worker that looked it
 * up before this commit still finds it (a dropped one fails it with "cache lookup failed",
 * which a worker of 25540ad takes for a lost lock). A function whose result type, parameter
 * names or defaults change cannot be replaced: the server names it in its hint, and it alone
 * is dropped and created again. Functions no file defines any more are dropped at the end
 * (their pg_proc rows are the ones this left untouched: same OID, same xmin).
 */
async function replaceApi(client: pg.ClientBase, api: SqlFile[], inPlace: boolean): Promise<void> {
  if (!inPlace) {
    const { rows } = await client.query<{ functions: string | null }>(
      `select string_agg(p.oid::regprocedure::text, ', ') as functions from pg_proc p
       where p.pronamespace = 'holdfast'::regnamespace`,
    );
    if (rows[0]?.functions) await client.query(`drop function ${rows[0].functions}`);
  }
  const versions = async () =>
    new Map(
      (
        await client.query<{ oid: number; xmin: string; sig: string }>(
          `select oid::int, xmin::text, oid::regprocedure::text as sig from pg_proc
           where pronamespace = 'holdfast'::regnamespace`,
        )
      ).rows.map((r) => [r.oid, r]),
    );
  // The functions each file defines: those of its names whose pg_proc row it created or
  // changed. (A row is also changed by a grant, so a file that revokes on all functions,
  // 90_access.sql, defines none: it names none.)
  const defined = new Set<number>();
  for (const f of api) {
    const names = new Set(
      [...f.text.matchAll(/^create function holdfast\.(\w+)\s*\(/gim)].map((m) => m[1]),
    );
    const before = await versions();
    const text = f.text.replace(/^create function /gim, "create or replace function ");
    for (let tries = 0; ; tries++) {
      await client.query("savepoint api_file");
      try {
        await client.query(text);
        await client.query("release savepoint api_file");
        break;
      } catch (err) {
        await client.query("rollback to savepoint api_file");
        const e = err as { code?: string; hint?: string; message: string };
        const drop = e.code === "42P13" && tries < 100 ? dropFirstHint.exec(e.hint ?? "") : null;
        if (!drop) {
          throw new MigrationError(`holdfast: sql/api/${f.name} failed: ${e.message}`, {
            cause: err,
          });
        }
        await client.query(`drop function ${drop[1]}`);
      }
    }
    for (const [oid, r] of await versions()) {
      const name = r.sig.replace(/^holdfast\./, "").replace(/\(.*$/, "");
      if (names.has(name) && before.get(oid)?.xmin !== r.xmin) defined.add(oid);
    }
  }
  // What no file defines any more: a removed function, or an old signature of one whose
  // parameters changed (it would make calls ambiguous).
  const obsolete = [...(await versions()).values()].filter((r) => !defined.has(r.oid));
  if (obsolete.length > 0)
    await client.query(`drop function ${obsolete.map((r) => r.sig).join(", ")}`);
}

/**
 * Runs a no-transaction migration one statement at a time (CREATE INDEX CONCURRENTLY refuses a
 * transaction block), and records it once every statement went through. Its statements must
 * be rerunnable (`if not exists`): an interrupted run is resumed by the next migrate, after
 * the INVALID indexes an interrupted concurrent build leaves behind are dropped (only one
 * migrator runs at a time: the migration lock).
 */
async function runOutsideTransaction(
  client: pg.ClientBase,
  logger: Logger,
  m: Migration,
): Promise<void> {
  const { rows } = await client.query<{ index: string }>(
    `select c.oid::regclass::text as index from pg_index i join pg_class c on c.oid = i.indexrelid
     where c.relnamespace = 'holdfast'::regnamespace and not i.indisvalid`,
  );
  for (const r of rows) {
    logger.warn(
      { event: "migrate_invalid_index", index: r.index, migration: m.name },
      "holdfast: dropping an index an interrupted build left invalid; building it again",
    );
    await client.query(`drop index concurrently if exists ${r.index}`);
  }
  for (const st of statements(m.text)) {
    try {
      await client.query(st);
    } catch (err) {
      throw new MigrationError(
        `holdfast: migration ${m.name} (outside a transaction) failed; run migrate again to resume it: ${(err as Error).message}`,
        { cause: err },
      );
    }
  }
  await client.query("insert into holdfast.migrations (name) values ($1) on conflict do nothing", [
    m.name,
  ]);
}

/**
 * Workers of a release before 0.2 (a schema before rollingFrom) read task rows as the table's
 * row type: once a migration adds a column to holdfast.tasks, their reports are refused and
 * they take that for a lost lock, so tasks they ran would run again. Logged when such a
 * schema is migrated while lock sessions are connected.
 */
async function warnOfOldWorkers(
  client: pg.ClientBase,
  logger: Logger,
  executed: string[],
): Promise<void> {
  if (executed.length === 0 || executed.includes(rollingFrom)) return;
  const { rows } = await client.query<{ n: number }>(
    `select count(*)::int as n from pg_stat_activity
     where datname = current_database() and application_name like 'holdfast:lock:%'`,
  );
  const sessions = rows[0]?.n ?? 0;
  logger.warn(
    { event: "migrate_stop_old_workers", schemaVersion: executed.at(-1), lockSessions: sessions },
    `holdfast: this schema (${executed.at(-1)}) predates rolling upgrades: stop its workers before migrating (${sessions} lock sessions connected now); they would run tasks again (docs/upgrading.md)`,
  );
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
 * Drops the views of schema holdfast and the roles' grants on its tables (not the tables and
 * data), which sql/api/ creates again; its functions are replaced in place (replaceApi).
 */
async function dropApi(client: pg.ClientBase): Promise<void> {
  const { rows } = await client.query<{ views: string | null }>(`
    select string_agg(c.oid::regclass::text, ', ') as views from pg_class c
    where c.relnamespace = 'holdfast'::regnamespace and c.relkind = 'v'`);
  const views = rows[0]?.views;
  if (views) await client.query(`drop view ${views}`);
  await client.query(`do $$
    declare r text;
    begin
      for r in select rolname from pg_roles
               where rolname in ('holdfast_producer', 'holdfast_worker', 'holdfast_observer') loop
        execute format('revoke all on all tables in schema holdfast from %I', r);
      end loop;
    end $$`);
}
