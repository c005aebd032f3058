import { afterAll, beforeAll, expect, it } from "vitest";
import { Holdfast, type Task, UnknownKindError } from "../src/index.js";
import { kindNamePattern } from "../src/options.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";
import { captureLogger } from "./support/log-capture.js";
import { until } from "./support/wait.js";

// A kind's stored settings have one owner (hf.defineKind / SQL define_kind): a worker's
// handler entry writes only what it declares, and a declaration that changes a stored value
// is logged with both values instead of silently taking turns with another deployment.
let db: TestDatabase;
let hf: Holdfast;

beforeAll(async () => {
  db = await freshDatabase();
  hf = new Holdfast({ connectionString: db.url, logger: silent });
});
afterAll(async () => {
  await hf?.close();
  await db?.drop();
});

async function stored(kind: string): Promise<Record<string, unknown>> {
  const { rows } = await db.pool.query(
    `select max_attempts, min_interval::text, batch_max, strict_order, max_running, keep_checkpoint,
       retain_succeeded::text from holdfast.kinds where kind = $1`,
    [kind],
  );
  return rows[0];
}

it("a plain handler entry leaves a stored maxRunning and batch size alone", async () => {
  await hf.defineKind("owned", {
    maxRunning: 2,
    batch: { max: 5 },
    maxAttempts: 7,
    minInterval: "1 second",
    retention: { succeeded: "2 days" },
  });
  const before = await stored("owned");
  expect(before).toMatchObject({ batch_max: 5, max_running: 2, max_attempts: 7 });

  const ran: number[] = [];
  const worker = hf.worker({
    concurrency: 2,
    handlers: { owned: async (task: Task<{ i: number }>) => void ran.push(task.payload.i) },
  });
  await worker.start();
  try {
    expect(await stored("owned")).toEqual(before);
    // The stored batch size reaches this single-task handler one task at a time, in order.
    await hf.enqueueMany(
      "owned",
      [0, 1, 2].map((i) => ({ key: "o", payload: { i } })),
    );
    await until(() => ran.length === 3, 20_000, "three tasks ran");
    expect(ran).toEqual([0, 1, 2]);
  } finally {
    await worker.stop();
  }
  expect(await stored("owned")).toEqual(before);
});

it("a kind a worker creates without declaring anything gets the defaults", async () => {
  expect(await hf.enqueue("fresh", { key: "k" }).catch((e) => e)).toBeInstanceOf(UnknownKindError);
  const worker = hf.worker({ handlers: { fresh: async () => {} } });
  await worker.start();
  await worker.stop();
  expect(await stored("fresh")).toMatchObject({
    batch_max: 1,
    max_attempts: 5,
    max_running: null,
    strict_order: true,
  });
  // A producer-only process enqueues once the kind exists.
  expect((await hf.enqueue("fresh", { key: "k" })).deduped).toBe(false);
});

it("two workers declaring different settings for a kind: each start that changes one logs both values", async () => {
  const a = captureLogger();
  const b = captureLogger();
  const hfA = new Holdfast({ connectionString: db.url, logger: a.logger });
  const hfB = new Holdfast({ connectionString: db.url, logger: b.logger });
  try {
    const start = async (h: Holdfast, maxRunning: number) => {
      const w = h.worker({
        handlers: { contested: { handler: async () => {}, maxRunning, maxAttempts: 3 } },
      });
      await w.start();
      await w.stop();
    };
    await start(hfA, 3); // creates the kind: nothing to warn about
    await start(hfB, 5);
    await start(hfA, 3);
    const changes = (lines: Array<Record<string, unknown>>) =>
      lines.filter((l) => l.event === "kind_settings_changed").map((l) => [l.level, l.changes]);
    expect(changes(b.lines)).toEqual([
      [40, [{ setting: "maxRunning", stored: "3", declared: "5" }]],
    ]);
    expect(changes(a.lines)).toEqual([
      [40, [{ setting: "maxRunning", stored: "5", declared: "3" }]],
    ]);
    // The same declaration again changes nothing and says nothing.
    await start(hfA, 3);
    expect(changes(a.lines)).toHaveLength(1);
    expect(await stored("contested")).toMatchObject({ max_running: 3, max_attempts: 3 });
  } finally {
    await hfA.close();
    await hfB.close();
  }
});

it("the kind name pattern is one: the table's check, define_kind's and the worker options' agree", async () => {
  const { rows } = await db.pool.query(`select
      (select string_agg(pg_get_constraintdef(c.oid), ' ') from pg_constraint c
       where c.conrelid = 'holdfast.kinds'::regclass and c.contype = 'c') as "check",
      (select p.prosrc from pg_proc p join pg_namespace n on n.oid = p.pronamespace
       where n.nspname = 'holdfast' and p.proname = 'define_kind') as define_kind`);
  const literal = `'${kindNamePattern.source}'`;
  expect(rows[0].check).toContain(literal);
  expect(rows[0].define_kind).toContain(literal);
});
