import pg from "pg";
import { afterAll, beforeAll, expect, inject, it } from "vitest";
import { Holdfast } from "../src/index.js";
import { type Snapshot, takeSnapshot } from "../src/inspect/index.js";
import { runCli } from "./support/cli.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";
import { assertInspectShape } from "./support/inspect-schema.js";
import { startWorkerProcess, type WorkerProcess } from "./support/processes.js";
import { createRunsTable } from "./support/runs.js";

let db: TestDatabase;
let hf: Holdfast;
const procs: WorkerProcess[] = [];
const clients: pg.Client[] = [];
const role = `hf_reader_${Math.random().toString(36).slice(2, 8)}`;

beforeAll(async () => {
  db = await freshDatabase();
  await createRunsTable(db.pool);
  hf = new Holdfast({ pool: db.pool, logger: silent });
});

afterAll(async () => {
  await Promise.all(procs.map((p) => p.kill()));
  await Promise.all(clients.map((c) => c.end().catch(() => {})));
  await db.drop();
  // Roles are server-wide: drop the test's reader once its database (and grants) are gone.
  const admin = new pg.Client({ connectionString: inject("adminUrl") });
  await admin.connect();
  await admin.query(`drop role if exists ${role}`);
  await admin.end();
});

const inspectJson = async (args: string[] = []) => {
  const r = await runCli(["inspect", "--json", "--database", db.url, ...args]);
  const doc = JSON.parse(r.stdout) as Snapshot;
  assertInspectShape(doc);
  return { ...r, doc };
};

/** The backend pid of a worker process's lock session, read independently of holdfast's tables. */
async function lockSessionPid(worker: string): Promise<number | undefined> {
  const { rows } = await db.pool.query<{ pid: number }>(
    "select pid from pg_stat_activity where application_name = $1",
    [`holdfast:lock:${worker}`],
  );
  return rows[0]?.pid;
}

let victim: WorkerProcess;
let firstRun: { id: number; fence: number; pid: number };

it("shows the key, pid and fence of a lock held by a handler running in another process", async () => {
  victim = await startWorkerProcess(db.url, "holder");
  procs.push(victim);
  const { id } = await hf.enqueue("job", { key: "dream:ws:alice:alice", payload: { ms: 120_000 } });
  const start = await victim.waitFor((e) => e.event === "start" && e.id === id);
  const pid = await lockSessionPid("holder");
  expect(pid).toBeTypeOf("number");

  const { code, doc } = await inspectJson();
  expect(code).toBe(0);
  expect(doc.healthy).toBe(true);
  expect(doc.holders).toHaveLength(1);
  expect(doc.holders[0]).toMatchObject({
    key: "dream:ws:alice:alice",
    kind: "job",
    taskId: id,
    attempt: 1,
    fence: start.fence,
    worker: "holder",
    pid,
    applicationName: "holdfast:lock:holder",
    clientAddr: "127.0.0.1",
  });
  expect(doc.queue).toContainEqual(
    expect.objectContaining({ kind: "job", running: 1, pending: 0, deadLettered: 0 }),
  );
  expect(doc.capacity.connections).toMatchObject({ lockSessions: 1, listenSessions: 1 });
  expect(doc.capacity.advisoryLocks.holdfast).toBe(1);

  // The default table shows the same facts within 80 columns.
  const table = await runCli(["inspect", "--database", db.url]);
  expect(table.code).toBe(0);
  const lines = table.stdout.split("\n");
  expect(Math.max(...lines.map((l) => l.length))).toBeLessThanOrEqual(80);
  const row = lines.find((l) => l.includes("dream:ws:alice:alice"));
  expect(row).toContain(String(pid));
  expect(table.stdout).toContain(
    `fence ${start.fence}  client 127.0.0.1  app holdfast:lock:holder`,
  );
  firstRun = { id, fence: start.fence as number, pid: pid as number };
});

it("lists a session blocked on a held key as a waiter, blocked by the holder", async () => {
  const waiter = new pg.Client({ connectionString: db.url, application_name: "manual-waiter" });
  clients.push(waiter);
  await waiter.connect();
  const waiterPid = (await waiter.query("select pg_backend_pid() as pid")).rows[0].pid as number;
  const blocked = waiter
    .query("select pg_advisory_lock(holdfast.lock_id('dream:ws:alice:alice'))")
    .catch(() => {});
  let snap: Snapshot | undefined;
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  for (let i = 0; i < 100 && !snap?.waiters.length; i++) {
    snap = await takeSnapshot(c, {});
    if (!snap.waiters.length) await new Promise((r) => setTimeout(r, 50));
  }
  await c.end();
  const { doc } = await inspectJson(["--key", "dream:ws:alice:alice"]);
  expect(doc.waiters).toEqual([
    expect.objectContaining({
      key: "dream:ws:alice:alice",
      pid: waiterPid,
      applicationName: "manual-waiter",
      blockedBy: [firstRun.pid],
    }),
  ]);
  // Filtered to another key, neither the holder nor the waiter shows.
  const other = await inspectJson(["--key", "no-such-key"]);
  expect(other.doc.holders).toEqual([]);
  expect(other.doc.waiters).toEqual([]);
  await db.pool.query("select pg_cancel_backend($1)", [waiterPid]);
  await blocked;
  await waiter.end();
});

it("works for a role with SELECT rights only (no function calls, no locks)", async () => {
  await db.pool.query(`create role ${role} login password 'reader'`);
  await db.pool.query(`grant usage on schema holdfast to ${role}`);
  await db.pool.query(
    `grant select on holdfast.keys, holdfast.tasks, holdfast.kinds, holdfast.orphans, holdfast.schedules, holdfast.schedule_ticks to ${role}`,
  );
  const u = new URL(db.url);
  u.username = role;
  u.password = "reader";
  const { code, doc } = await inspectJson(["--database", u.toString()]);
  expect(code).toBe(0);
  // Other roles' client addresses are hidden from an unprivileged role; the rest is exact.
  expect(doc.holders[0]).toMatchObject({
    key: "dream:ws:alice:alice",
    pid: firstRun.pid,
    fence: firstRun.fence,
    clientAddr: null,
  });
});

it("after SIGKILL shows the task as an orphan (exit 1) until a new worker takes it over", async () => {
  await victim.kill("SIGKILL");
  // The server notices the dead client within milliseconds; wait for that, not a fixed time.
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  let snap: Snapshot | undefined;
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline && !snap?.orphans.length) {
    snap = await takeSnapshot(c, {});
    if (!snap.orphans.length) await new Promise((r) => setTimeout(r, 50));
  }
  await c.end();

  const { code, doc } = await inspectJson();
  expect(code).toBe(1);
  expect(doc.healthy).toBe(false);
  expect(doc.holders).toEqual([]);
  expect(doc.orphans).toEqual([
    expect.objectContaining({
      key: "dream:ws:alice:alice",
      taskId: firstRun.id,
      attempt: 1,
      fence: firstRun.fence,
      worker: "holder",
      holderPid: firstRun.pid,
    }),
  ]);
  expect(doc.problems.join()).toMatch(/1 orphaned task/);
  const table = await runCli(["inspect", "--database", db.url]);
  expect(table.code).toBe(1);
  expect(table.stdout).toContain("ORPHANS (1)");
  expect(table.stdout).toContain("UNHEALTHY");

  // Still an orphan a while later: nobody sweeps without a live worker.
  const again = await inspectJson();
  expect(again.doc.orphans.map((o) => o.taskId)).toEqual([firstRun.id]);
  expect(again.doc.orphans[0]?.runningForMs).toBeGreaterThanOrEqual(
    doc.orphans[0]?.runningForMs ?? 0,
  );

  const rescuer = await startWorkerProcess(db.url, "rescuer");
  procs.push(rescuer);
  const second = await rescuer.waitFor((e) => e.event === "start" && e.id === firstRun.id);
  // The takeover names the dead holder (reported by the rescuer's sweeper).
  const takeover = await rescuer.waitFor((e) => e.event === "takeover");
  expect(takeover.previous).toEqual([
    {
      task: firstRun.id,
      key: "dream:ws:alice:alice",
      kind: "job",
      attempt: 1,
      worker: "holder",
      pid: firstRun.pid,
    },
  ]);
  const after = await inspectJson();
  expect(after.code).toBe(0);
  expect(after.doc.orphans).toEqual([]);
  expect(after.doc.holders[0]).toMatchObject({
    taskId: firstRun.id,
    attempt: 2,
    worker: "rescuer",
    fence: second.fence,
  });
  expect(Number(second.fence)).toBeGreaterThan(firstRun.fence);
});

it("shows a capped kind's slots held / cap and each schedule's next tick", async () => {
  await hf.defineKind("capped", { maxRunning: 2 });
  await hf.enqueue("capped", { key: "capped:1" });
  await hf.schedule("nightly", { cron: "0 3 * * *", kind: "capped", key: "all" });
  const session = new pg.Client({ connectionString: db.url });
  clients.push(session);
  await session.connect();
  await session.query("select * from holdfast.claim(array['capped'], 'manual')");

  const { doc } = await inspectJson();
  expect(doc.queue).toContainEqual(
    expect.objectContaining({ kind: "capped", running: 1, slots: { used: 1, max: 2 } }),
  );
  expect(doc.queue).toContainEqual(expect.objectContaining({ kind: "job", slots: null }));
  const next = new Date(doc.schedules[0]?.nextAt ?? 0);
  expect(doc.schedules).toEqual([
    expect.objectContaining({ name: "nightly", kind: "capped", cron: "0 3 * * *" }),
  ]);
  expect(next.getUTCHours()).toBe(3);
  expect(next.getTime()).toBeGreaterThan(Date.now());

  const table = await runCli(["inspect", "--database", db.url]);
  expect(table.stdout).toMatch(/capped .* 1\/2\n/);
  expect(table.stdout).toContain(
    `nightly  0 3 * * *  capped  ${doc.schedules[0]?.nextAt?.replace(/\.\d+Z$/, "Z")}`,
  );
});
