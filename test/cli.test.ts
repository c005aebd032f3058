import { readdirSync } from "node:fs";
import { afterAll, beforeAll, expect, it } from "vitest";
import type { Snapshot } from "../src/inspect/index.js";
import { type CliProcess, runCli, startCli } from "./support/cli.js";
import { freshDatabase, type TestDatabase } from "./support/db.js";
import { assertInspectShape } from "./support/inspect-schema.js";
import { freePort } from "./support/postgres.js";
import { until } from "./support/wait.js";

// Child processes all the way: every command runs through bin/holdfast.js as a user would.
let db: TestDatabase;
let deadId: number | undefined;
const workers: CliProcess[] = [];
const handlers = "test/fixtures/cli-handlers.ts";

beforeAll(async () => {
  db = await freshDatabase({ migrate: false });
});

afterAll(async () => {
  for (const w of workers) if (w.child.exitCode === null) w.child.kill("SIGKILL");
  await Promise.all(workers.map((w) => w.exited));
  await db.drop();
});

const cli = (args: string[]) => runCli(args, { DATABASE_URL: db.url });
const worker = (name: string, extra: string[] = []) => {
  const w = startCli(["worker", "--handlers", handlers, "--name", name, ...extra], {
    DATABASE_URL: db.url,
  });
  workers.push(w);
  return w;
};
const enqueue = async (key: string, payload: object, extra: string[] = []) => {
  const r = await cli(["enqueue", "job", key, "--payload", JSON.stringify(payload), ...extra]);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  return (JSON.parse(r.stdout) as { id: number }).id;
};
const taskState = async (id: number) =>
  (
    await db.pool.query<{
      state: string;
      attempt: number;
      last_error: { message: string } | null;
      checkpoint: unknown;
    }>("select state, attempt, last_error, checkpoint from holdfast.tasks where id = $1", [id])
  ).rows[0];

it("round trip: migrate, enqueue, a worker runs it from a handlers module (metrics on /metrics), inspect shows it done", async () => {
  const migrated = await cli(["migrate"]);
  expect(migrated.code).toBe(0);
  const migrations = readdirSync(new URL("../sql/migrations/", import.meta.url)).sort();
  expect(JSON.parse(migrated.stdout)).toMatchObject({ applied: migrations, apiUpdated: true });
  expect(JSON.parse((await cli(["migrate"])).stdout)).toEqual({ applied: [], apiUpdated: false });

  const unknown = await cli(["enqueue", "job", "k", "--payload", "{}"]);
  expect(unknown.code).toBe(1);
  expect(unknown.stderr).toMatch(/unknown kind/);

  const id = await enqueue("roundtrip", { ms: 10 }, ["--define"]);
  const w = worker("rt", ["--metrics-port", "0"]);
  await w.waitFor((l) => l.event === "task_succeeded" && l.task === id);
  const { port } = await w.waitFor((l) => l.event === "metrics_listening");
  const scraped = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  expect(scraped).toContain('holdfast_tasks_succeeded_total{kind="job"} 1');
  expect(scraped).toContain('holdfast_queue_tasks{kind="job",state="pending"} 0');

  const r = await cli(["inspect", "--json", "--key", "roundtrip"]);
  expect(r.code).toBe(0);
  const doc = JSON.parse(r.stdout) as Snapshot;
  assertInspectShape(doc);
  expect(doc.holders).toEqual([]);
  expect(doc.queue).toEqual([
    expect.objectContaining({ kind: "job", pending: 0, running: 0, deadLettered: 0 }),
  ]);
  expect(await taskState(id)).toMatchObject({ state: "succeeded", attempt: 1 });

  w.child.kill("SIGTERM");
  expect(await w.exited).toBe(0);
});

it("SIGTERM during a task waits for it to finish, then exits 0", async () => {
  const w = worker("graceful");
  await w.waitFor((l) => l.event === "worker_started");
  const id = await enqueue("graceful", { ms: 1_500 });
  await w.waitFor((l) => l.event === "task_started" && l.task === id);
  const signalledAt = Date.now();
  w.child.kill("SIGTERM");
  expect(await w.exited).toBe(0);
  const elapsed = Date.now() - signalledAt;
  const events = w.logs.map((l) => l.event);
  expect(events.indexOf("shutdown_requested")).toBeLessThan(events.indexOf("task_succeeded"));
  expect(events.indexOf("task_succeeded")).toBeLessThan(events.indexOf("worker_stopped"));
  expect(elapsed).toBeGreaterThan(500); // it did wait for the rest of the 1.5 s task
  expect(await taskState(id)).toMatchObject({ state: "succeeded", attempt: 1 });
});

it("a second SIGTERM aborts the running task (recorded as a failed attempt, retried later)", async () => {
  const w = worker("impatient");
  await w.waitFor((l) => l.event === "worker_started");
  const id = await enqueue("impatient", { ms: 120_000 });
  await w.waitFor((l) => l.event === "task_started" && l.task === id);
  w.child.kill("SIGTERM");
  await w.waitFor((l) => l.event === "shutdown_requested");
  const abortedAt = Date.now();
  w.child.kill("SIGTERM");
  expect(await w.exited).toBe(0);
  expect(Date.now() - abortedAt).toBeLessThan(10_000);
  const t = await taskState(id);
  expect(t).toMatchObject({ state: "pending", attempt: 1 });
  expect(t?.last_error?.message).toMatch(/ShutdownError/);
  expect(w.logs.map((l) => l.event)).toEqual(
    expect.arrayContaining(["shutdown_abort", "task_failed", "task_retry_scheduled"]),
  );
  expect((await cli(["cancel", String(id)])).code).toBe(0); // keep it from later workers
});

it("a second SIGTERM hands a checkpointed task over: pending in place, attempt not counted, another worker resumes it at once", async () => {
  const w = worker("handover");
  await w.waitFor((l) => l.event === "worker_started");
  const id = await enqueue("handover", { ms: 120_000, checkpoint: true });
  await w.waitFor((l) => l.event === "task_started" && l.task === id);
  const other = worker("resumer");
  await other.waitFor((l) => l.event === "worker_started");
  await until(async () => (await taskState(id))?.checkpoint !== null);
  w.child.kill("SIGTERM");
  await w.waitFor((l) => l.event === "shutdown_requested");
  w.child.kill("SIGTERM");
  expect(await w.exited).toBe(0);
  expect(w.logs.map((l) => l.event)).toEqual(
    expect.arrayContaining(["shutdown_abort", "task_handed_over"]),
  );
  expect(w.logs.map((l) => l.event)).not.toContain("task_failed");
  const resumed = await other.waitFor((l) => l.event === "task_succeeded" && l.task === id);
  expect(resumed.attempt).toBe(1); // the handed-over run did not count
  expect(await taskState(id)).toMatchObject({ state: "succeeded", attempt: 1 });
  other.child.kill("SIGTERM");
  expect(await other.exited).toBe(0);
});

it("inspect exits 0 when healthy, 1 with a dead letter, 2 when Postgres is unreachable", async () => {
  const healthy = await cli(["inspect"]);
  expect(healthy.code).toBe(0);
  expect(healthy.stdout).toContain("status: healthy");

  const w = worker("deadletter");
  const id = await enqueue("doomed", { ms: 1, fail: true }, ["--max-attempts", "1"]);
  await w.waitFor((l) => l.event === "task_dead_lettered" && l.task === id);
  w.child.kill("SIGTERM");
  await w.exited;
  expect(await taskState(id)).toMatchObject({ state: "failed" });
  deadId = id;

  const unhealthy = await cli(["inspect"]);
  expect(unhealthy.code).toBe(1);
  expect(unhealthy.stdout).toContain("UNHEALTHY: 1 dead-lettered task");
  const json = await cli(["inspect", "--json"]);
  expect(json.code).toBe(1);
  const doc = JSON.parse(json.stdout) as Snapshot;
  assertInspectShape(doc);
  expect(doc.queue.find((q) => q.kind === "job")?.deadLettered).toBe(1);
  // A kind filter scopes health too: another kind is healthy.
  expect((await cli(["inspect", "--kind", "other"])).code).toBe(0);

  const port = await freePort(); // nothing listens there
  const down = await runCli(["inspect", "--database", `postgres://u:secret@127.0.0.1:${port}/x`]);
  expect(down.code).toBe(2);
  expect(down.stderr).toContain(`cannot connect to Postgres at 127.0.0.1:${port}/x`);
  expect(down.stderr).not.toContain("secret");
  const none = await runCli(["inspect"]);
  expect(none.code).toBe(2);
  expect(none.stderr).toMatch(/DATABASE_URL/);
});

it("inspect --watch --json prints one snapshot per tick until SIGINT, exiting with the last status", async () => {
  const watch = startCli(["inspect", "--watch", "0.2", "--json"], { DATABASE_URL: db.url });
  workers.push(watch);
  // Three frames a tick apart, each a complete document (the dead letter above: unhealthy).
  await watch.waitFor(() => watch.logs.length >= 3, 15_000);
  watch.child.kill("SIGINT");
  expect(await watch.exited).toBe(1);
  for (const frame of watch.logs) assertInspectShape(frame);
  const times = watch.logs.map((f) => Date.parse(String(f.at)));
  expect(times[2] ?? 0).toBeGreaterThan(times[0] ?? 0);
});

it("cancel stops a pending task; cancelling an ended task exits 1", async () => {
  const later = new Date(Date.now() + 3_600_000).toISOString();
  const id = await enqueue("later", { ms: 1 }, ["--run-at", later]);
  const r = await cli(["cancel", String(id)]);
  expect(r.code).toBe(0);
  expect(JSON.parse(r.stdout)).toEqual({ id, cancelled: true });
  expect(await taskState(id)).toMatchObject({ state: "cancelled" });
  expect((await cli(["cancel", String(id)])).code).toBe(1);
  const missing = await cli(["cancel", "999999"]);
  expect(missing.code).toBe(1);
  expect(missing.stderr).toMatch(/no task with id 999999/);
});

it("retry requeues a dead-lettered task, or says the schema has no holdfast.retry", async () => {
  expect(deadId).toBeTypeOf("number");
  const { rows } = await db.pool.query<{ present: boolean }>(
    `select exists (select 1 from pg_proc p join pg_namespace n on n.oid = p.pronamespace
       where n.nspname = 'holdfast' and p.proname = 'retry') as present`,
  );
  const r = await cli(["retry", String(deadId)]);
  if (rows[0]?.present) {
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ id: deadId, retried: true });
    expect((await taskState(deadId as number))?.state).toBe("pending");
  } else {
    // holdfast.retry(id) comes with the retries/dead-letter migration.
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no holdfast\.retry\(id\)/);
  }
});

it("every command has --help", async () => {
  for (const cmd of ["migrate", "enqueue", "worker", "inspect", "retry", "cancel"]) {
    const r = await runCli([cmd, "--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`Usage: holdfast ${cmd}`);
    expect(r.stdout).toContain("--database");
  }
});
