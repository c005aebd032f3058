// Guarantee 7: where it is deployed. A real PgBouncer in front of the test server, in each
// pool mode: session pooling keeps every guarantee (a SIGKILLed worker's task is taken over
// although the pooler keeps its backend alive); transaction and statement pooling are refused
// before anything is taken; producers and inspect work through a transaction pooler, with
// workers on a direct session URL.
import pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { startDashboard } from "../src/dashboard/server.js";
import { ConfigError, Holdfast } from "../src/index.js";
import { runCli, startCli } from "./support/cli.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";
import { type Bouncer, type PoolMode, pgbouncerBinary, startBouncer } from "./support/pgbouncer.js";
import { startWorkerProcess, type WorkerProcess } from "./support/processes.js";
import { createRunsTable, overlaps, type RunRow } from "./support/runs.js";
import { until } from "./support/wait.js";

const { bin, reason } = pgbouncerBinary();
if (!bin) console.warn(`pooler tests skipped: ${reason}`);

let db: TestDatabase;
const bouncers: Partial<Record<PoolMode, Bouncer>> = {};
const procs: WorkerProcess[] = [];

beforeAll(async () => {
  if (!bin) return;
  db = await freshDatabase();
  await createRunsTable(db.pool);
  for (const mode of ["session", "transaction", "statement"] as const)
    bouncers[mode] = await startBouncer(inject("adminUrl"), mode);
});

afterAll(async () => {
  await Promise.all(procs.map((p) => p.kill()));
  for (const b of Object.values(bouncers)) await b?.stop();
  await db?.drop();
});

const through = (mode: PoolMode): string => {
  const b = bouncers[mode];
  if (!b) throw new Error(`no ${mode} bouncer`);
  return b.url(db.url);
};

async function start(name: string, env: Record<string, string>, url: string) {
  const p = await startWorkerProcess(url, name, env);
  procs.push(p);
  return p;
}

/** Waits until every task of `ids` has succeeded; returns the attempts that did not. */
async function allSucceeded(ids: number[], timeoutMs = 30_000) {
  await until(
    async () => {
      const { rows } = await db.pool.query(
        "select count(*)::int as n from holdfast.tasks where id = any ($1) and state = 'succeeded'",
        [ids],
      );
      return rows[0].n === ids.length;
    },
    timeoutMs,
    `${ids.length} tasks succeeded`,
  );
  const { rows } = await db.pool.query(
    "select task_id::int, attempt, outcome, worker from holdfast.attempts where task_id = any ($1) and outcome <> 'succeeded' order by task_id, attempt",
    [ids],
  );
  return rows as Array<{ task_id: number; attempt: number; outcome: string; worker: string }>;
}

/** Advisory locks held in the test database, by anyone (holdfast's or the migration's). */
async function advisoryLocks(): Promise<number> {
  const { rows } = await db.pool.query(
    `select count(*)::int as n from pg_locks l
     where l.locktype = 'advisory' and l.database = (select oid from pg_database where datname = current_database())`,
  );
  return rows[0].n;
}

describe.skipIf(!bin)("behind PgBouncer", () => {
  it("session mode: a SIGKILLed worker's task is taken over (the pooler keeps its backend alive), its follow-up runs after it, each once", async () => {
    const url = through("session");
    const workers = await Promise.all(["s1", "s2"].map((n) => start(n, {}, url)));
    const hf = new Holdfast({ connectionString: url, logger: silent });
    try {
      const key = "ws/pooled/dream";
      const { id: dream } = await hf.enqueue("job", { key, payload: { ms: 3_000 } });
      const { id: follow } = await hf.enqueue("job", { key, payload: { ms: 100 } });
      const first = await Promise.race(
        workers.map((p) => p.waitFor((e) => e.event === "start" && e.id === dream)),
      );
      const victim = workers.find((p) => p.name === first.worker);
      if (!victim) throw new Error(`no worker ${first.worker}`);
      const survivor = workers.find((p) => p !== victim) as WorkerProcess;
      const killedAt = Date.now();
      await victim.kill("SIGKILL");
      // The pooler keeps the victim's server backends (it only resets them): holdfast must
      // see that the key's lock is free, not that a backend with that pid is alive.
      const restart = await survivor.waitFor(
        (e) => e.event === "start" && e.id === dream && e.attempt === 2,
        15_000,
      );
      console.log(`session pooler: takeover ${restart.at - killedAt} ms after SIGKILL`);
      const dreamEnd = await survivor.waitFor(
        (e) => e.event === "end" && e.id === dream && e.attempt === 2,
      );
      const next = await survivor.waitFor((e) => e.event === "start" && e.id === follow);
      expect(next.at).toBeGreaterThanOrEqual(dreamEnd.at);
      expect(victim.events.some((e) => e.event === "start" && e.id === follow)).toBe(false);
      const lost = await allSucceeded([dream, follow]);
      expect(lost).toEqual([{ task_id: dream, attempt: 1, outcome: "lost", worker: victim.name }]);
      const { rows: runs } = await db.pool.query<RunRow>(
        "select * from runs where task_id = any ($1)",
        [[dream, follow]],
      );
      expect(overlaps(runs, () => killedAt)).toEqual([]);
      // Each task ended once: one succeeded run each.
      expect(runs.filter((r) => r.ended_at !== null).map((r) => Number(r.task_id))).toEqual(
        expect.arrayContaining([dream, follow]),
      );
      expect(runs.filter((r) => r.ended_at !== null)).toHaveLength(2);
    } finally {
      await hf.close();
      for (const p of workers) await p.kill();
    }
  }, 60_000);

  it("session mode, the pooler killed and restarted: the runs behind it are aborted and taken over once each by a direct worker, in order; the worker behind it comes back", async () => {
    const own = await startBouncer(inject("adminUrl"), "session"); // killed here, not shared
    const mine: WorkerProcess[] = [];
    try {
      const hf = new Holdfast({ pool: db.pool, logger: silent });
      const pooled = await start("p1", { HF_CONCURRENCY: "2" }, own.url(db.url));
      mine.push(pooled);
      const keys = ["restart:a", "restart:b"];
      const long: number[] = [];
      const follow: number[] = [];
      for (const key of keys) {
        long.push((await hf.enqueue("job", { key, payload: { ms: 6_000 } })).id);
        follow.push((await hf.enqueue("job", { key, payload: { ms: 50 } })).id);
      }
      for (const id of long) await pooled.waitFor((e) => e.event === "start" && e.id === id);
      const direct = await start("d1", { HF_CONCURRENCY: "2" }, db.url);
      mine.push(direct);
      const killedAt = Date.now();
      await own.kill();
      for (const id of long) {
        const again = await direct.waitFor(
          (e) => e.event === "start" && e.id === id && e.attempt === 2,
          15_000,
        );
        console.log(`pooler killed: task ${id} restarted after ${again.at - killedAt} ms`);
      }
      const lost = await allSucceeded([...long, ...follow]);
      expect(lost).toEqual(
        long.map((id) => ({ task_id: id, attempt: 1, outcome: "lost", worker: "p1" })),
      );
      for (const [i, id] of follow.entries()) {
        const end = await direct.waitFor((e) => e.event === "end" && e.id === long[i]);
        const next = await direct.waitFor((e) => e.event === "start" && e.id === id);
        expect(next.at).toBeGreaterThanOrEqual(end.at);
      }
      const { rows: runs } = await db.pool.query<RunRow>(
        "select * from runs where task_id = any ($1)",
        [[...long, ...follow]],
      );
      expect(overlaps(runs, () => killedAt)).toEqual([]);
      // The aborted runs never recorded an end (their fenced write could not commit).
      expect(runs.filter((r) => r.worker === "p1").every((r) => r.ended_at === null)).toBe(true);

      // Back: the pooler restarts, the direct worker stops, and the pooled worker runs new work.
      await own.restart();
      await direct.kill("SIGTERM");
      const { id: later } = await hf.enqueue("job", { key: "restart:later", payload: { ms: 10 } });
      await pooled.waitFor((e) => e.event === "end" && e.id === later, 30_000);
      expect(await allSucceeded([later])).toEqual([]);
    } finally {
      for (const p of mine) await p.kill();
      await own.stop();
    }
  }, 90_000);

  for (const mode of ["transaction", "statement"] as const) {
    it(`${mode} mode: worker start and migrate are refused with a ConfigError naming the mode and the fix; nothing is left behind`, async () => {
      const url = through(mode);
      const hf = new Holdfast({ connectionString: url, logger: silent });
      try {
        const worker = hf.worker({ handlers: { job: async () => {} } });
        const refused = await worker.start().then(
          () => undefined,
          (err: unknown) => err,
        );
        expect(refused).toBeInstanceOf(ConfigError);
        const message = (refused as Error).message;
        expect(message).toContain(`${mode} mode`);
        expect(message).toContain("sessionConnectionString");
        expect(message).toContain("session mode");
        console.log(`refusal (${mode}): ${message}`);
        await expect(hf.migrate()).rejects.toThrow(`${mode} mode`);
        await worker.stop();
      } finally {
        await hf.close();
      }
      // No lock anywhere, no holdfast session, no prepared statement on the pooled backends.
      expect(await advisoryLocks()).toBe(0);
      const { rows: sessions } = await db.pool.query(
        "select count(*)::int as n from pg_stat_activity where datname = current_database() and application_name ~ '^holdfast:(lock|listen):'",
      );
      expect(sessions[0].n).toBe(0);
      const probe = new pg.Client({ connectionString: url });
      await probe.connect();
      try {
        for (let i = 0; i < 3; i++) {
          const { rows } = await probe.query(
            "select count(*)::int as n from pg_prepared_statements",
          );
          expect(rows[0].n).toBe(0);
        }
      } finally {
        await probe.end();
      }

      // The CLI: non-zero exit, the same message.
      const cliWorker = await runCli([
        "worker",
        "--handlers",
        "test/fixtures/cli-handlers.ts",
        "--database",
        url,
      ]);
      expect(cliWorker.code).toBe(1);
      expect(cliWorker.stderr).toContain(`${mode} mode`);
      expect(cliWorker.stderr).toContain("--session-url");
      const cliMigrate = await runCli(["migrate", "--database", url]);
      expect(cliMigrate.code).toBe(1);
      expect(cliMigrate.stderr).toContain(`${mode} mode`);
      expect(await advisoryLocks()).toBe(0);

      // The fix, from the CLI: the same pooled URL, the direct one for the sessions (flag and env).
      expect((await runCli(["migrate", "--database", url, "--session-url", db.url])).code).toBe(0);
      const cli = startCli(["worker", "--handlers", "test/fixtures/cli-handlers.ts"], {
        DATABASE_URL: url,
        HOLDFAST_SESSION_URL: db.url,
      });
      try {
        const enqueued = await runCli([
          "enqueue",
          "job",
          `cli:${mode}`,
          "--define",
          "--database",
          url,
        ]);
        expect(enqueued.code).toBe(0);
        const { id } = JSON.parse(enqueued.stdout) as { id: number };
        await cli.waitFor((l) => l.event === "task_succeeded" && l.task === id, 30_000);
      } finally {
        cli.child.kill("SIGTERM");
        await cli.exited;
      }
    }, 60_000);
  }

  it("transaction mode for producers, inspect, the dashboard and the workers' pool; a session URL for the workers' sessions: every task runs once", async () => {
    const pooled = through("transaction");
    // Producers through the transaction pooler (enqueue, defineKind, schedules, cancel, retry).
    const producer = new Holdfast({ connectionString: pooled, logger: silent });
    const ids: number[] = [];
    try {
      await producer.defineKind("job", { maxAttempts: 3 });
      for (let i = 0; i < 12; i++) {
        ids.push((await producer.enqueue("job", { key: `k${i % 4}`, payload: { ms: 50 } })).id);
      }
      const { id: cancelled } = await producer.enqueue("job", {
        key: "cancel-me",
        payload: { ms: 50 },
        runAt: new Date(Date.now() + 3_600_000),
      });
      expect(await producer.cancel(cancelled)).toBe(true);
      expect(await producer.retry(cancelled)).toBe(true);
      expect(await producer.cancel(cancelled)).toBe(true);
      await producer.schedule("pooled", { cron: "0 3 * * *", kind: "job", key: "nightly" });
      expect((await producer.schedules()).map((s) => s.name)).toContain("pooled");
      expect(await producer.unschedule("pooled")).toBe(true);
      // Migrate with the session URL beside the pooled one.
      const split = new Holdfast({
        connectionString: pooled,
        sessionConnectionString: db.url,
        logger: silent,
      });
      await split.migrate();
      await split.close();

      const workers = await Promise.all(
        ["t1", "t2"].map((n) => start(n, { HF_SESSION_URL: db.url, HF_CONCURRENCY: "2" }, pooled)),
      );
      for (let i = 0; i < 8; i++) {
        ids.push((await producer.enqueue("job", { key: `k${i % 4}`, payload: { ms: 50 } })).id);
      }
      expect(await allSucceeded(ids)).toEqual([]);
      const { rows: runs } = await db.pool.query<RunRow>(
        "select * from runs where task_id = any ($1)",
        [ids],
      );
      expect(runs).toHaveLength(ids.length);
      expect(new Set(runs.map((r) => Number(r.task_id))).size).toBe(ids.length);
      expect(overlaps(runs)).toEqual([]);

      // inspect through the transaction pooler: healthy, the worker sessions listed.
      const inspected = await runCli(["inspect", "--json", "--database", pooled]);
      expect(inspected.stderr).toBe("");
      expect(inspected.code).toBe(0);
      const snapshot = JSON.parse(inspected.stdout);
      expect(snapshot.orphans).toEqual([]);
      expect(snapshot.capacity.connections.lockSessions).toBe(2);
      // The dashboard on the pooled Holdfast.
      const dashboard = await startDashboard({ hf: producer, port: 0, logger: silent });
      try {
        for (const page of ["api/overview", "", `tasks/${ids[0]}`]) {
          const r = await fetch(`${dashboard.url}${page}`);
          expect(r.status, page).toBe(200);
          if (page === "api/overview") expect((await r.json()).snapshot.orphans).toEqual([]);
        }
      } finally {
        await dashboard.close();
      }
      for (const w of workers) await w.kill("SIGTERM");
    } finally {
      await producer.close();
    }
  }, 90_000);
});
