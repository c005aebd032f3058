import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, expect, it } from "vitest";
import { importMessages, kind, saveMessage } from "../examples/claim-table/producer.js";
import { setup } from "../examples/claim-table/setup.js";
import { messageWorker } from "../examples/claim-table/worker.js";
import { Holdfast } from "../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";
import { pythonWithPsycopg } from "./support/python.js";
import { until } from "./support/wait.js";

// docs/replacing-a-claim-table.md: its snippets are the files of examples/claim-table/,
// and they run here.
const dir = fileURLToPath(new URL("../examples/claim-table/", import.meta.url));
const doc = readFileSync(new URL("../docs/replacing-a-claim-table.md", import.meta.url), "utf8");

const py = pythonWithPsycopg();
if (!py.bin) console.warn(`claim-table guide, Python part skipped: ${py.reason}`);

let db: TestDatabase;
let hf: Holdfast;

beforeAll(async () => {
  db = await freshDatabase({ migrate: false });
  hf = new Holdfast({ pool: db.pool, logger: silent });
  await db.pool.query(readFileSync(`${dir}schema.sql`, "utf8"));
  await setup(hf);
});
afterAll(async () => {
  await hf?.close();
  await db?.drop();
});

it("every snippet of the guide is the example file it names", () => {
  const blocks = [...doc.matchAll(/<!-- include: (\S+) -->\n```\w+\n([\s\S]*?)\n```/g)];
  expect(blocks.map((b) => b[1])).toEqual([
    "examples/claim-table/schema.sql",
    "examples/claim-table/before.sql",
    "examples/claim-table/setup.ts",
    "examples/claim-table/producer.ts",
    "examples/claim-table/producer.py",
    "examples/claim-table/worker.ts",
  ]);
  for (const [, file, body] of blocks) {
    const text = readFileSync(new URL(`../${file}`, import.meta.url), "utf8").replace(/\n+$/, "");
    expect({ file, body }).toEqual({ file, body: text });
  }
  // Every fenced block of code in the guide is one of them (apart from one-line SQL in prose).
  expect(doc.match(/```(ts|python)\n/g)).toHaveLength(4);
});

async function counts(): Promise<{ messages: number; tasks: number; derived: number }> {
  const { rows } = await db.pool.query(`select
    (select count(*)::int from messages) as messages,
    (select count(*)::int from holdfast.tasks where kind = '${kind}') as tasks,
    (select count(*)::int from derivations) as derived`);
  return rows[0];
}

it("TypeScript: a message and its task commit together; a refused import leaves neither", async () => {
  await saveMessage(db.pool, hf, "ws:alice", "hello");
  await saveMessage(db.pool, hf, "ws:alice", "again"); // folds into the pending task
  await importMessages(db.pool, hf, [
    { workUnit: "ws:bob", body: "b1" },
    { workUnit: "ws:carol", body: "c1" },
  ]);
  expect(await counts()).toEqual({ messages: 4, tasks: 3, derived: 0 });
  const err = await importMessages(db.pool, hf, [
    { workUnit: "ws:dave", body: "d1" },
    { workUnit: "", body: "no unit" },
  ]).catch((e: unknown) => e);
  expect(err).toMatchObject({ code: "HF002", index: 1 });
  expect(await counts()).toEqual({ messages: 4, tasks: 3, derived: 0 });
});

const run = promisify(execFile);

it.skipIf(!py.bin)(
  "Python: psycopg 3 in the caller's transaction, with the SQL API only",
  async () => {
    const bin = py.bin as string;
    const { stdout } = await run(bin, [`${dir}producer.py`, db.url, "ws:erin", "e1", "e2"]);
    expect(stdout.trim().split("\n")).toHaveLength(2);
    // Inside the caller's transaction: rolled back with it, message and task.
    const script = `
import sys, psycopg
sys.path.insert(0, ${JSON.stringify(dir)})
from producer import save_message, import_messages
with psycopg.connect(sys.argv[1]) as conn:
    try:
        with conn.transaction():
            save_message(conn, "ws:frank", "f1")
            raise RuntimeError("the caller's transaction fails after the enqueue")
    except RuntimeError:
        pass
    import_messages(conn, [("ws:gina", "g1"), ("ws:gina", "g2"), ("ws:hal", "h1")])
`;
    await run(bin, ["-c", script, db.url]);
    const { rows } = await db.pool.query(
      `select m.work_unit, count(*)::int as messages,
       (select count(*)::int from holdfast.tasks t where t.key = m.work_unit) as tasks
     from messages m where m.work_unit in ('ws:erin', 'ws:frank', 'ws:gina', 'ws:hal')
     group by m.work_unit order by m.work_unit`,
    );
    expect(rows).toEqual([
      { work_unit: "ws:erin", messages: 2, tasks: 1 },
      { work_unit: "ws:gina", messages: 2, tasks: 1 },
      { work_unit: "ws:hal", messages: 1, tasks: 1 },
    ]);
  },
);

it("the worker processes every message once, one work unit at a time", async () => {
  const worker = messageWorker(hf, db.pool);
  await worker.start();
  try {
    const { messages } = await counts();
    await until(async () => (await counts()).derived === messages, 30_000, "every message derived");
    await until(
      async () =>
        (
          await db.pool.query(
            `select count(*)::int as n from holdfast.tasks where kind = '${kind}' and state <> 'succeeded'`,
          )
        ).rows[0].n === 0,
      30_000,
      "every task succeeded",
    );
    // A message written after the worker started is processed too.
    await saveMessage(db.pool, hf, "ws:alice", "later");
    await until(async () => (await counts()).derived === messages + 1, 30_000, "the later one");
  } finally {
    await worker.stop();
  }
  const left = await db.pool.query(
    "select count(*)::int as n from messages where processed_at is null",
  );
  expect(left.rows[0].n).toBe(0);
});
