import { afterAll, beforeAll, expect, it } from "vitest";
import { Holdfast } from "../src/index.js";
import {
  extractRelease,
  migrateWith,
  nextRelease,
  type Release,
  repo,
  startReleaseWorker,
} from "./fixtures/releases.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";
import type { WorkerProcess } from "./support/processes.js";
import { createRunsTable, overlaps, type RunRow } from "./support/runs.js";
import { until } from "./support/wait.js";

// A deploy runs nothing twice (guarantee 7): workers of the release deployed before keep
// running beside a newer schema, their reports landing while the migration replaces the
// functions under their prepared statements, and workers of the new release join them.
// The release upgraded from: its workers are out there and cannot change any more.
const previous = process.env.HOLDFAST_UPGRADE_FROM ?? "25540ad";
const current: Release = { dir: repo, remove: async () => {} };

const releases: Release[] = [];
const procs: WorkerProcess[] = [];
const dbs: TestDatabase[] = [];
let old: Release;

beforeAll(async () => {
  old = await extractRelease(previous);
  releases.push(old);
});

afterAll(async () => {
  await Promise.all(procs.map((p) => p.kill()));
  await Promise.all(dbs.map((d) => d.drop()));
  await Promise.all(releases.map((r) => r.remove()));
});

async function workers(
  release: Release,
  db: TestDatabase,
  names: string[],
  env: Record<string, string> = {},
) {
  const started = await Promise.all(
    names.map((name) =>
      // More slots than keys: a task that falls due is claimed at once.
      startReleaseWorker(release, db.url, name, { HF_CONCURRENCY: "8", HF_LOG: "warn", ...env }),
    ),
  );
  procs.push(...started);
  return started;
}

/** `n` tasks over ten keys, of 1 to 2 s each, so their reports keep landing for a while. */
async function enqueue(db: TestDatabase, n: number, from: number): Promise<void> {
  for (let i = from; i < from + n; i++) {
    const payload = { ms: 1_000 + ((i * 397) % 1_000) };
    await db.pool.query("select holdfast.enqueue('job', $1, $2::jsonb)", [
      `k${i % 10}`,
      JSON.stringify(payload),
    ]);
  }
}

/** Every task succeeded after exactly one run, and no two runs of a key overlapped. */
async function expectExactlyOnce(db: TestDatabase, total: number, procs: WorkerProcess[]) {
  await until(
    async () => {
      const { rows } = await db.pool.query(
        "select count(*)::int as n from holdfast.tasks where state not in ('pending', 'running')",
      );
      return rows[0].n === total;
    },
    50_000,
    `${total} tasks finished`,
  );
  const trouble = procs.flatMap((p) =>
    p.events
      .filter((e) => ["lock_lost", "pump_error", "statement_error"].includes(String(e.event)))
      .map((e) => `${p.name}: ${String(e.event)} ${JSON.stringify(e.err ?? "")}`),
  );
  const { rows: tasks } = await db.pool.query(
    "select id::int, state, attempt from holdfast.tasks order by id",
  );
  const { rows: runs } = await db.pool.query<RunRow>("select * from runs order by task_id");
  const runsOf = new Map<number, number>();
  for (const r of runs) runsOf.set(Number(r.task_id), (runsOf.get(Number(r.task_id)) ?? 0) + 1);
  const twice = [...runsOf].filter(([, n]) => n > 1).map(([id]) => id);
  // The workers' lost sessions and refused statements, shown beside any task that ran twice.
  expect({ twice, trouble }).toEqual({ twice: [], trouble: expect.any(Array) });
  expect(tasks).toEqual(tasks.map((t) => ({ id: t.id, state: "succeeded", attempt: 1 })));
  expect(runs.length).toBe(total);
  expect(runs.every((r) => r.ended_at !== null)).toBe(true);
  expect(overlaps(runs)).toEqual([]);
}

/** Waits until the running workers have ended (and so reported) a first task. */
async function reportsLanding(running: WorkerProcess[]): Promise<void> {
  await Promise.race(running.map((p) => p.waitFor((e) => e.event === "end", 30_000)));
}

it(`workers of ${previous} keep running through this release's migration, beside its workers, each task once`, async () => {
  const db = await freshDatabase({ migrate: false });
  dbs.push(db);
  await migrateWith(old, db.url);
  await createRunsTable(db.pool);
  const before = await workers(old, db, ["old-1", "old-2"]);
  await enqueue(db, 20, 0);
  await reportsLanding(before);
  // Whether or not this release changed an API file, every function is replaced under the
  // old workers' prepared statements: the case any release that changes a function meets.
  await db.pool.query("comment on schema holdfast is null");
  const hf = new Holdfast({ connectionString: db.url, logger: silent });
  expect((await hf.migrate()).apiUpdated).toBe(true);
  await hf.close();
  const after = await workers(current, db, ["new-1"]);
  await enqueue(db, 10, 20);
  await expectExactlyOnce(db, 30, [...before, ...after]);
});

/** Until the migration's backend waits for the test's advisory lock (4242, `gate`). */
async function migrationAt(db: TestDatabase, gate: number): Promise<void> {
  await until(
    async () =>
      (
        await db.pool.query(
          `select 1 from pg_locks where locktype = 'advisory' and not granted
           and classid = 4242 and objid = $1 and objsubid = 2`,
          [gate],
        )
      ).rowCount === 1,
    30_000,
    `the migration at gate ${gate}`,
  );
}

it("this release's workers keep running through a later migration that adds a column to holdfast.tasks, each task once", async () => {
  // The next release's migration waits at two gates the test holds: before its ALTER (while
  // the API is already dropped and recreated in its transaction) and after it, holding
  // holdfast.tasks locked. A claim sent meanwhile waits for it, then runs the replaced claim
  // function against the wider table: the server refuses that statement (42804), on a live
  // session whose handlers must go on.
  const next = await nextRelease(
    "9999_next_release.sql",
    `select pg_advisory_xact_lock_shared(4242, 1);
alter table holdfast.tasks add column next_release_note text;
select pg_advisory_xact_lock_shared(4242, 2);
`,
  );
  releases.push(next);
  const db = await freshDatabase();
  dbs.push(db);
  await createRunsTable(db.pool);
  // One worker, sweeping once a minute: a sweep the migration held up would hold up the
  // claim behind it (a lock session sends one statement at a time), and a sweep is not
  // refused. The claim the migration holds up is this worker's, with its handlers running.
  const before = await workers(current, db, ["cur-1"], {
    HF_CONCURRENCY: "20",
    HF_SWEEP_MS: "60000",
  });
  await enqueue(db, 20, 0);
  await reportsLanding(before);
  const gates = await db.session();
  await gates.query("select pg_advisory_lock(4242, 1), pg_advisory_lock(4242, 2)");
  const migrating = migrateWith(next, db.url);
  await migrationAt(db, 1);
  // Handlers running through the rest of the migration (losing the session for a refused
  // statement would abort them, and they would run again), and tasks due in a moment on keys
  // of their own: an idle slot claims them while the table is locked (a worker wakes at the
  // next task's due time).
  for (let i = 0; i < 6; i++)
    await db.pool.query("select holdfast.enqueue('job', $1, $2::jsonb)", [
      `long-${i}`,
      JSON.stringify({ ms: 4_000 }),
    ]);
  for (const key of ["late-0", "late-1"])
    await db.pool.query(
      "select holdfast.enqueue('job', $1, $2::jsonb, clock_timestamp() + interval '1.5 seconds')",
      [key, JSON.stringify({ ms: 500 })],
    );
  await until(
    () =>
      before[0]?.events.filter((e) => e.event === "start" && String(e.key).startsWith("long-"))
        .length === 6,
    10_000,
    "long tasks running",
  );
  await gates.query("select pg_advisory_unlock(4242, 1)");
  await migrationAt(db, 2);
  await until(
    async () =>
      (
        await db.pool.query(
          `select 1 from pg_stat_activity where datname = current_database()
           and application_name = 'holdfast:lock:cur-1' and wait_event_type = 'Lock'`,
        )
      ).rowCount !== 0,
    10_000,
    "a lock session's claim waiting for the migration",
  );
  await gates.query("select pg_advisory_unlock(4242, 2)");
  await migrating;
  // The same worker goes on against the new schema.
  await enqueue(db, 10, 20);
  await expectExactlyOnce(db, 38, before);
});
