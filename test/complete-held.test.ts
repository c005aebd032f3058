import { randomBytes } from "node:crypto";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { Holdfast, type Task } from "../src/index.js";
import { gate } from "./lock-loss/support.js";
import { freshDatabase, type TestDatabase } from "./support/db.js";
import { captureLogger } from "./support/log-capture.js";
import { until } from "./support/wait.js";

// A worker's LISTEN session reports its lock session's successes (holdfast.complete_held), so
// the lock session only claims and unlocks. What must hold: a key is never free before its
// run's report commits; a report of a run whose holder is gone is rejected; only the holder's
// own login role may report for it; a report sent twice is accepted twice.

let db: TestDatabase;
const clients: pg.Client[] = [];
const otherRole = `hf_other_${randomBytes(4).toString("hex")}`;

async function session(url = db.url): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url });
  c.on("error", () => {}); // a test terminates some of them
  await c.connect();
  clients.push(c);
  return c;
}

const pidOf = async (c: pg.Client) =>
  (await c.query<{ pid: number }>("select pg_backend_pid() as pid")).rows[0]?.pid as number;

/** Each test enqueues and claims its own kind, so that no test claims another's task. */
async function claimOne(c: pg.Client, kind: string) {
  const { rows } = await c.query("select id, fence from holdfast.claim(array[$1], 'w')", [kind]);
  expect(rows).toHaveLength(1);
  return rows[0] as { id: string; fence: string };
}

const completeHeld = async (c: pg.Client, t: { id: string; fence: string }, holder: number) =>
  (
    await c.query("select id::int, status from holdfast.complete_held($1, $2, $3)", [
      [t.id],
      [t.fence],
      holder,
    ])
  ).rows;

const stateOf = async (id: string) =>
  (await db.pool.query("select state from holdfast.tasks where id = $1", [id])).rows[0]?.state;

beforeAll(async () => {
  db = await freshDatabase();
  for (const kind of ["job", "ch1", "ch2", "ch3", "ch4"])
    await db.pool.query("select holdfast.define_kind($1)", [kind]);
  await db.pool.query("select holdfast.define_kind('capped', max_running => 2)");
  await db.pool.query(`create role ${otherRole} login password 'pw'`);
  await db.pool.query(`grant holdfast_worker to ${otherRole}`);
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.end().catch(() => {})));
  await db.drop();
  const admin = new pg.Client({ connectionString: inject("adminUrl") });
  await admin.connect();
  await admin.query(`drop role ${otherRole}`);
  await admin.end();
});

describe("complete_held", () => {
  it("completes for a live holder and leaves the key locked until the holder unlocks it", async () => {
    const first = (await db.pool.query("select holdfast.enqueue('ch1', 'ch:a') as id")).rows[0].id;
    const next = (await db.pool.query("select holdfast.enqueue('ch1', 'ch:a') as id")).rows[0].id;
    const holder = await session();
    const reporter = await session();
    const other = await session();
    const run = await claimOne(holder, "ch1");
    expect(run.id).toBe(first);

    expect(await completeHeld(reporter, run, await pidOf(holder))).toEqual([]);
    expect(await stateOf(first)).toBe("succeeded");
    // Committed, but the holder still holds the key: the next task is not anyone's yet.
    const { rows: none } = await other.query("select id from holdfast.claim(array['ch1'], 'w2')");
    expect(none).toEqual([]);
    await holder.query(
      "select count(*) from holdfast.settle('{}', '{}', array['ch1'], 'w', 0, unlock_keys => array['ch:a'])",
    );
    const { rows: got } = await other.query("select id from holdfast.claim(array['ch1'], 'w2')");
    expect(got.map((r) => r.id)).toEqual([next]);
  });

  it("rejects the report once the holder's session is gone, and the sweep then requeues the task", async () => {
    const id = (await db.pool.query("select holdfast.enqueue('ch2', 'ch:gone') as id")).rows[0].id;
    const holder = await session();
    const run = await claimOne(holder, "ch2");
    const pid = await pidOf(holder);
    await db.pool.query("select pg_terminate_backend($1)", [pid]);
    await until(
      async () =>
        (await db.pool.query("select 1 from pg_stat_activity where pid = $1", [pid])).rowCount ===
          0 || undefined,
    );
    const reporter = await session();
    expect(await completeHeld(reporter, run, pid)).toEqual([
      { id: Number(id), status: "rejected" },
    ]);
    expect(await stateOf(id)).toBe("running");
    const sweeper = await session();
    await sweeper.query("select holdfast.sweep()");
    expect(await stateOf(id)).toBe("pending");
  });

  it("rejects a stale fence and a report from another login role", async () => {
    const id = (await db.pool.query("select holdfast.enqueue('ch3', 'ch:role') as id")).rows[0].id;
    const holder = await session();
    const run = await claimOne(holder, "ch3");
    const pid = await pidOf(holder);
    const reporter = await session();
    expect(
      await completeHeld(reporter, { id, fence: String(BigInt(run.fence) - 1n) }, pid),
    ).toEqual([{ id: Number(id), status: "rejected" }]);
    const u = new URL(db.url);
    u.username = otherRole;
    u.password = "pw";
    const stranger = await session(u.toString());
    expect(await completeHeld(stranger, run, pid)).toEqual([
      { id: Number(id), status: "rejected" },
    ]);
    expect(await stateOf(id)).toBe("running");
    expect(await completeHeld(reporter, run, pid)).toEqual([]);
  });

  it("accepts a report sent twice (its first commit unconfirmed), and sends a capped kind's run to its holder", async () => {
    const id = (await db.pool.query("select holdfast.enqueue('ch4', 'ch:twice') as id")).rows[0].id;
    const holder = await session();
    const run = await claimOne(holder, "ch4");
    const pid = await pidOf(holder);
    const reporter = await session();
    expect(await completeHeld(reporter, run, pid)).toEqual([]);
    expect(await completeHeld(holder, run, pid)).toEqual([]);
    const { rows: attempts } = await db.pool.query(
      "select outcome from holdfast.attempts where task_id = $1",
      [id],
    );
    expect(attempts).toEqual([{ outcome: "succeeded" }]);

    const capped = (await db.pool.query("select holdfast.enqueue('capped', 'ch:cap') as id"))
      .rows[0].id;
    expect(await completeHeld(reporter, await claimOne(holder, "capped"), pid)).toEqual([
      { id: Number(capped), status: "own" },
    ]);
    expect(await stateOf(capped)).toBe("running");
  });
});

describe("a worker whose LISTEN session fails while it reports", () => {
  it("keeps each key's tasks in order, one at a time, each once, while its LISTEN backend is terminated again and again", async () => {
    const { logger, lines } = captureLogger();
    const hf = new Holdfast({ pool: db.pool, logger });
    const keys = 20;
    const perKey = 15;
    const ids: number[] = [];
    for (let n = 0; n < perKey; n++)
      for (let k = 0; k < keys; k++)
        ids.push((await hf.enqueue("job", { key: `lf:${k}`, payload: { n } })).id);
    const running = new Map<string, number>();
    const order = new Map<string, number[]>();
    let overlaps = 0;
    const runs = new Map<number, number>();
    const worker = hf.worker({
      name: "listen-faults",
      concurrency: 8,
      prefetch: 8,
      handlers: {
        job: async (task: Task<{ n: number }>) => {
          if ((running.get(task.key) ?? 0) > 0) overlaps++;
          running.set(task.key, (running.get(task.key) ?? 0) + 1);
          order.set(task.key, [...(order.get(task.key) ?? []), task.payload.n]);
          runs.set(task.id, (runs.get(task.id) ?? 0) + 1);
          await new Promise((r) => setTimeout(r, 2 + Math.random() * 5));
          running.set(task.key, (running.get(task.key) ?? 1) - 1);
        },
      },
    });
    await worker.start();
    let terminated = 0;
    try {
      await until(async () => {
        const { rows } = await db.pool.query(
          "select pg_terminate_backend(pid) as ok from pg_stat_activity where application_name = 'holdfast:listen:listen-faults'",
        );
        if (rows.some((r) => r.ok)) terminated++;
        const { rows: open } = await db.pool.query(
          "select count(*)::int as n from holdfast.tasks where id = any ($1) and state <> 'succeeded'",
          [ids],
        );
        return open[0].n === 0 || undefined;
      }, 60_000);
      // Every key lock is given back (a leaked one would block its key for the session's life).
      await until(async () => {
        const { rows } = await db.pool.query(
          `select count(*)::int as n from pg_locks l join pg_stat_activity a on a.pid = l.pid
           where l.locktype = 'advisory' and l.objsubid = 1
             and a.application_name = 'holdfast:lock:listen-faults'`,
        );
        return rows[0].n === 0 || undefined;
      }, 10_000);
    } finally {
      await worker.stop();
      await hf.close();
    }
    expect(terminated).toBeGreaterThan(0);
    expect(lines.filter((l) => l.event === "listen_reconnecting").length).toBeGreaterThan(0);
    expect(overlaps).toBe(0);
    const expected = Array.from({ length: perKey }, (_, n) => n);
    for (let k = 0; k < keys; k++) expect(order.get(`lf:${k}`)).toEqual(expected);
    expect([...runs.values()].every((n) => n === 1)).toBe(true);
    expect(runs.size).toBe(ids.length);
    const { rows } = await db.pool.query(
      "select count(*)::int as n from holdfast.attempts where task_id = any ($1) and outcome = 'succeeded'",
      [ids],
    );
    expect(rows[0].n).toBe(ids.length);
  });

  it("reports again on the lock session when the LISTEN session dies with a report in flight: the task ends once and its key's next task runs after it", async () => {
    const { logger, lines } = captureLogger();
    const hf = new Holdfast({ pool: db.pool, logger });
    const first = (await hf.enqueue("job", { key: "inflight", payload: { n: 1 } })).id;
    const second = (await hf.enqueue("job", { key: "inflight", payload: { n: 2 } })).id;
    const release = gate();
    const started: number[] = [];
    const worker = hf.worker({
      name: "inflight",
      concurrency: 2,
      handlers: {
        job: async (task: Task<{ n: number }>) => {
          started.push(task.payload.n);
          if (task.payload.n === 1) await release.promise;
        },
      },
    });
    await worker.start();
    const blocker = await session();
    try {
      await until(() => started.includes(1) || undefined);
      // The key row locked elsewhere: the report waits for it on the LISTEN session's backend.
      await blocker.query("begin");
      await blocker.query("select 1 from holdfast.keys where key = 'inflight' for update");
      release.open();
      const listen = await until(async () => {
        const { rows } = await db.pool.query(
          `select pid from pg_stat_activity
           where application_name = 'holdfast:listen:inflight' and wait_event_type = 'Lock'`,
        );
        return rows[0]?.pid as number | undefined;
      });
      await db.pool.query("select pg_terminate_backend($1)", [listen]);
      await until(() => lines.some((l) => l.event === "report_moved") || undefined);
      await blocker.query("commit");
      await until(async () => (await stateOf(String(second))) === "succeeded" || undefined);
    } finally {
      await blocker.query("rollback").catch(() => {});
      await worker.stop();
      await hf.close();
    }
    expect(started).toEqual([1, 2]);
    const { rows } = await db.pool.query(
      "select task_id::int, attempt, outcome from holdfast.attempts where task_id = any ($1) order by task_id",
      [[first, second]],
    );
    expect(rows).toEqual([
      { task_id: first, attempt: 1, outcome: "succeeded" },
      { task_id: second, attempt: 1, outcome: "succeeded" },
    ]);
  });
});
