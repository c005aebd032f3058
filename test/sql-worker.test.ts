import pg from "pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Holdfast, type Task } from "../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";
import { createRunsTable, overlaps, type RunRow } from "./support/runs.js";

let db: TestDatabase;
let hf: Holdfast;

beforeAll(async () => {
  db = await freshDatabase();
  await createRunsTable(db.pool);
  hf = new Holdfast({ connectionString: db.url, logger: silent });
  await hf.defineKind("job", { maxAttempts: 3 });
});

afterAll(async () => {
  await hf.close();
  await db.drop();
});

type Payload = { failFirst?: boolean };
const runSql = `insert into runs (task_id, key, attempt, fence, worker, started_at)
  values ($1, $2, $3, $4, $5, clock_timestamp())`;
const endSql = "update runs set ended_at = clock_timestamp() where task_id = $1 and fence = $2";

/** A worker in SQL only: claim, do the work, complete or fail — what a Python service would do. */
async function sqlWorker(name: string, stopAt: () => boolean): Promise<number> {
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  let ran = 0;
  try {
    while (!stopAt()) {
      const { rows } = await c.query("select * from holdfast.claim(array['job'], $1, 1)", [name]);
      const t = rows[0];
      if (!t) {
        await new Promise((r) => setTimeout(r, 10));
        continue;
      }
      await c.query(runSql, [t.id, t.key, t.attempt, t.fence, name]);
      await new Promise((r) => setTimeout(r, 15));
      await c.query(endSql, [t.id, t.fence]);
      ran++;
      if (t.payload.failFirst && t.attempt === 1) {
        const { rows: f } = await c.query(
          "select holdfast.fail($1, $2, 'failed on purpose', interval '0') as ok",
          [t.id, t.fence],
        );
        expect(f[0].ok).toBe(true);
      } else {
        const { rows: d } = await c.query("select holdfast.complete($1, $2) as ok", [
          t.id,
          t.fence,
        ]);
        expect(d[0].ok).toBe(true);
      }
    }
  } finally {
    await c.end();
  }
  return ran;
}

it("a worker written in SQL runs tasks side by side with TS workers, never overlapping a key", async () => {
  const keys = ["a", "b", "c", "d", "e"];
  for (let i = 0; i < 12; i++) {
    for (const key of keys) await hf.enqueue("job", { key, payload: { failFirst: i % 5 === 0 } });
  }
  const total = 60;
  const workers = [1, 2].map((n) =>
    hf.worker({
      name: `ts${n}`,
      concurrency: 2,
      handlers: {
        job: async (task: Task<Payload>) => {
          await db.pool.query(runSql, [task.id, task.key, task.attempt, task.fence, `ts${n}`]);
          await new Promise((r) => setTimeout(r, 15));
          await db.pool.query(endSql, [task.id, task.fence]);
          if (task.payload.failFirst && task.attempt === 1) throw new Error("failed on purpose");
        },
      },
    }),
  );
  const done = async () =>
    (await db.pool.query("select count(*)::int as n from holdfast.tasks where state = 'succeeded'"))
      .rows[0].n === total;
  let finished = false;
  const sqlRuns = Promise.all([
    sqlWorker("sql1", () => finished),
    sqlWorker("sql2", () => finished),
  ]);
  await Promise.all(workers.map((w) => w.start()));
  const deadline = Date.now() + 30_000;
  while (!(await done()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  finished = true;
  const [s1, s2] = await sqlRuns;
  await Promise.all(workers.map((w) => w.stop()));

  expect(await done()).toBe(true);
  const { rows: runs } = await db.pool.query<RunRow>("select * from runs");
  expect(overlaps(runs)).toEqual([]);
  // Each task ran once, plus one retry for each that failed its first attempt.
  expect(runs).toHaveLength(total + 15); // i = 0, 5, 10 on 5 keys
  expect(s1 + s2).toBeGreaterThan(0);
  expect(new Set(runs.map((r) => r.worker)).size).toBe(4);
  // (two TS workers, two SQL workers)
});
