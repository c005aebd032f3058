import { randomBytes } from "node:crypto";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { Holdfast, PermissionDeniedError } from "../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";

let db: TestDatabase;
const suffix = randomBytes(4).toString("hex");
const users = {
  producer: `hf_producer_${suffix}`,
  worker: `hf_worker_${suffix}`,
  observer: `hf_observer_${suffix}`,
  nobody: `hf_nobody_${suffix}`,
};
const clients: Record<string, pg.Client> = {};
let taskId: string;

beforeAll(async () => {
  db = await freshDatabase();
  for (const [role, user] of Object.entries(users)) {
    await db.pool.query(`create role ${user} login password 'pw'`);
    if (role !== "nobody") await db.pool.query(`grant holdfast_${role} to ${user}`);
  }
  await db.pool.query("select holdfast.define_kind('job')");
  taskId = (await db.pool.query("select holdfast.enqueue('job', 'k:seed') as id")).rows[0].id;
  for (const role of Object.keys(users)) {
    clients[role] = new pg.Client({ connectionString: urlAs(role) });
    await clients[role].connect();
  }
});

function urlAs(role: string): string {
  const u = new URL(db.url);
  u.username = users[role as keyof typeof users];
  u.password = "pw";
  return u.toString();
}

afterAll(async () => {
  await Promise.all(Object.values(clients).map((c) => c.end()));
  await db.drop();
  // Roles are cluster-wide: remove this file's login roles (the holdfast_* roles stay).
  const admin = new pg.Client({ connectionString: inject("adminUrl") });
  await admin.connect();
  for (const user of Object.values(users)) await admin.query(`drop role ${user}`);
  await admin.end();
});

const calls: Record<string, string> = {
  enqueue: "select holdfast.enqueue('job', 'k:role')",
  enqueue_task: "select * from holdfast.enqueue_task('job', 'k:role2')",
  cancel: "select holdfast.cancel(ID)",
  retry: "select holdfast.retry(ID)",
  define_kind: "select holdfast.define_kind('job2')",
  claim: "select * from holdfast.claim(array['nothing'], 'w')",
  complete: "select holdfast.complete(ID, 0)",
  complete_many: "select holdfast.complete_many(array[ID]::bigint[], array[0]::bigint[])",
  release: "select holdfast.release(array[ID]::bigint[], array[0]::bigint[])",
  fail: "select holdfast.fail(ID, 0, 'x')",
  assert_fence: "select holdfast.assert_fence('k:nope', 1)",
  checkpoint: "select holdfast.checkpoint(ID, 0, '{}')",
  hand_over: "select holdfast.hand_over(array[ID]::bigint[], array[0]::bigint[])",
  next_run_at: "select holdfast.next_run_at(array['job'])",
  sweep: "select holdfast.sweep()",
  read_locks: "select * from holdfast.locks",
  read_orphans: "select * from holdfast.orphans",
  read_dead_letters: "select * from holdfast.dead_letters",
  read_tasks: "select * from holdfast.tasks",
  read_attempts: "select * from holdfast.attempts",
  write_tasks: "update holdfast.tasks set priority = 1",
  insert_task: "insert into holdfast.tasks (kind, key, max_attempts) values ('job', 'k:seed', 1)",
  delete_keys: "delete from holdfast.keys",
  private_function: "select holdfast._refresh_key('k:seed')",
  schedule: "select holdfast.schedule('r', '* * * * *', 'job', 'k:sched')",
  unschedule: "select holdfast.unschedule('nope')",
  schedules: "select * from holdfast.schedules()",
  fire_schedule: "select holdfast.fire_schedule('nope', 1, array[]::timestamptz[], now(), null)",
  read_schedules: "select * from holdfast.schedules",
};

const allowed: Record<string, string[]> = {
  producer: ["enqueue", "enqueue_task", "cancel", "retry", "schedule", "unschedule", "schedules"],
  worker: [
    "define_kind",
    "claim",
    "complete",
    "complete_many",
    "release",
    "fail",
    "checkpoint",
    "hand_over",
    "next_run_at",
    "sweep",
    "read_orphans", // the sweep reports the holders it replaced
    "schedules", // the leader reads them and fires their ticks
    "fire_schedule",
    // assert_fence raises HF004 for an unknown key: allowed to run, refused by the fence.
  ],
  observer: [
    "read_locks",
    "read_orphans",
    "read_dead_letters",
    "read_tasks",
    "read_attempts",
    "schedules",
    "read_schedules",
  ],
  nobody: [],
};

describe.each(Object.keys(users))("role holdfast_%s", (role) => {
  it("can do exactly what it should and is refused the rest (SQLSTATE 42501)", async () => {
    const c = clients[role] as pg.Client;
    for (const [name, text] of Object.entries(calls)) {
      const query = text.replaceAll("ID", taskId);
      const outcome = await c.query(query).then(
        () => "ok",
        (err: { code?: string }) => err.code ?? "error",
      );
      const expected = allowed[role]?.includes(name)
        ? "ok"
        : name === "assert_fence" && role === "worker"
          ? "HF004"
          : "42501";
      expect({ role, name, outcome }).toEqual({ role, name, outcome: expected });
    }
  });
});

it("a TS producer and a TS worker run the whole lifecycle with only their roles", async () => {
  const producer = new Holdfast({ connectionString: urlAs("producer"), logger: silent });
  const workerSide = new Holdfast({ connectionString: urlAs("worker"), logger: silent });
  try {
    const worker = workerSide.worker({
      sweepIntervalMs: 50,
      handlers: {
        job: async (task, ctx) => {
          const c = await workerSide.pool.connect();
          try {
            await ctx.assertFence(c);
          } finally {
            c.release();
          }
          if (task.key === "k:lifecycle") seen.push(task.checkpoint);
          await ctx.checkpoint({ attempt: task.attempt }); // through the worker's pool
          if (task.attempt === 1) throw new Error("first attempt fails");
        },
      },
    });
    const ended: string[] = [];
    const seen: unknown[] = [];
    const done = new Promise<void>((resolve) =>
      worker.on("task:end", (t, r) => {
        if (t.key !== "k:lifecycle") return;
        ended.push(r.outcome);
        if (r.outcome === "succeeded") resolve();
      }),
    );
    await worker.start();
    const { id } = await producer.enqueue("job", { key: "k:lifecycle", runAt: new Date() });
    await done;
    await worker.stop();
    expect(ended).toEqual(["failed", "succeeded"]);
    expect(seen).toEqual([null, { attempt: 1 }]);
    expect(await producer.retry(id)).toBe(false); // succeeded: nothing to requeue
    // Reading dead letters is the observer's: a typed error says which right is missing.
    await expect(producer.deadLetters()).rejects.toBeInstanceOf(PermissionDeniedError);
  } finally {
    await producer.close();
    await workerSide.close();
  }
});
