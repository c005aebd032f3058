import { expect, it } from "vitest";
import {
  EnqueueItemError,
  type EnqueueOptions,
  InvalidArgumentError,
  type Task,
  UnknownKindError,
} from "../src/index.js";
import { useHoldfast } from "./support/db.js";
import { until } from "./support/wait.js";

const t = useHoldfast({ bulk: {}, seq: {}, fifo: {}, big: {} });

/** The same items under a prefix (keys and dedupe keys are global across kinds). */
function items(prefix: string): EnqueueOptions[] {
  const later = new Date(Date.now() + 3_600_000);
  return [
    { key: `${prefix}a`, payload: { n: 0 } },
    { key: `${prefix}b`, payload: { n: 1 }, priority: 5 },
    { key: `${prefix}a`, payload: { n: 2 }, dedupeKey: `${prefix}d1` },
    { key: `${prefix}a`, payload: { m: 3 }, dedupeKey: `${prefix}d1`, onDedupe: "merge" },
    { key: `${prefix}c`, payload: { n: 4 }, runAt: later, maxAttempts: 2 },
    { key: `${prefix}a`, payload: { n: 5 } },
    { key: `${prefix}b`, payload: { n: 6 }, dedupeKey: `${prefix}d2`, debounce: "10 minutes" },
    {
      key: `${prefix}b`,
      payload: { n: 7 },
      dedupeKey: `${prefix}d2`,
      onDedupe: "replace",
      debounce: "20 minutes",
      maxWait: "15 minutes",
    },
    { key: `${prefix}a`, payload: { n: 8 }, dedupeKey: `${prefix}d1`, onDedupe: "keep" },
    { key: `${prefix}c`, payload: [1], priority: -1 },
    { key: `${prefix}pending`, payload: { p: 1 }, dedupeKey: `${prefix}d0`, onDedupe: "merge" },
  ];
}

/** What a kind's tasks look like, prefix removed: per key in claim order (priority, place). */
async function snapshot(kind: string, prefix: string): Promise<unknown[]> {
  const { rows } = await t.db.pool.query(
    `select substr(t.key, $2) as key, t.payload, t.priority, substr(t.dedupe_key, $2) as dedupe,
       t.max_attempts, round(extract(epoch from t.run_at - now()) / 60) as start_min,
       round(extract(epoch from t.place_at - now()) / 60) as place_min,
       k.head_id = t.id as head
     from holdfast.tasks t join holdfast.keys k on k.key = t.key
     where t.kind = $1 order by t.key, t.priority, t.place_at, t.id`,
    [kind, prefix.length + 1],
  );
  return rows;
}

/** Which results share a task, as indexes of the first result with that id. */
function shape(results: Array<{ id: number; deduped: boolean }>): unknown[] {
  return results.map((r) => [results.findIndex((o) => o.id === r.id), r.deduped]);
}

it("results in input order, each as enqueue would return it called item by item", async () => {
  // A task pending before the call, deduped into from the batch.
  await t.hf.enqueue("seq", { key: "s:pending", payload: { was: 1 }, dedupeKey: "s:d0" });
  await t.hf.enqueue("bulk", { key: "b:pending", payload: { was: 1 }, dedupeKey: "b:d0" });
  const one: Array<{ id: number; deduped: boolean }> = [];
  for (const item of items("s:")) one.push(await t.hf.enqueue("seq", item));
  const many = await t.hf.enqueueMany("bulk", items("b:"));

  expect(many).toHaveLength(one.length);
  expect(shape(many)).toEqual(shape(one));
  const expected = await snapshot("seq", "s:");
  expect(expected).toHaveLength(8);
  expect(await snapshot("bulk", "b:")).toEqual(expected);
  // New tasks get ids in input order.
  const fresh = many.filter((r) => !r.deduped).map((r) => r.id);
  expect(fresh).toEqual([...fresh].sort((a, b) => a - b));
});

it("per-key FIFO follows the input order", async () => {
  const keys = ["f:x", "f:y", "f:z"];
  const batch = Array.from({ length: 60 }, (_, i) => ({
    key: keys[(i * 7) % 3] as string,
    payload: { i },
  }));
  const ran = new Map<string, number[]>();
  const worker = t.hf.worker({
    concurrency: 3,
    handlers: {
      fifo: async (task: Task<{ i: number }>) => {
        ran.set(task.key, [...(ran.get(task.key) ?? []), task.payload.i]);
      },
    },
  });
  await t.hf.enqueueMany("fifo", batch);
  await worker.start();
  try {
    await until(() => [...ran.values()].flat().length === batch.length, 20_000, "every task ran");
  } finally {
    await worker.stop();
  }
  for (const key of keys)
    expect(ran.get(key)).toEqual(batch.filter((b) => b.key === key).map((b) => b.payload.i));
});

async function counts(): Promise<{ tasks: number; keys: number }> {
  const { rows } = await t.db.pool.query(`select
    (select count(*)::int from holdfast.tasks) as tasks,
    (select count(*)::int from holdfast.keys) as keys`);
  return rows[0];
}

it("one bad item refuses the whole call with its index, and nothing is written", async () => {
  const before = await counts();
  const good = (i: number) => ({ key: `bad:${i}`, payload: { i } });
  const cases: Array<[EnqueueOptions[], number, RegExp]> = [
    // Limits SQL owns (the TypeScript client does not check them).
    [[good(0), good(1), { key: "k".repeat(1001) }, good(3)], 2, /key/],
    [[good(0), { key: "" }], 1, /key/],
    [
      [good(0), good(1), good(2), { key: "x", payload: { s: "x".repeat(1024 * 1024) } }],
      3,
      /1 MiB/,
    ],
    [[good(0), { key: "x", maxWait: "1 hour", dedupeKey: "w" }], 1, /max_wait needs debounce/],
    [[good(0), { key: "x", onDedupe: "sometimes" as "keep" }], 1, /on_dedupe/],
    [[good(0), { key: "x", debounce: "soon", dedupeKey: "s" }], 1, /interval/],
    // A dedupe key belongs to one key: within the batch too.
    [
      [good(0), { key: "p", dedupeKey: "dk" }, good(2), { key: "q", dedupeKey: "dk" }],
      3,
      /dedupe key/,
    ],
    // What SQL cannot see once converted, refused before the round trip.
    [[good(0), { key: "x", runAt: new Date("nope") }], 1, /runAt/],
    [[good(0), good(1), { key: "x", priority: 1.5 }], 2, /priority/],
    [[{ key: "x", payload: () => 1 }], 0, /JSON/],
  ];
  for (const [batch, index, message] of cases) {
    const err = await t.hf.enqueueMany("bulk", batch).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EnqueueItemError);
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect({
      index: (err as EnqueueItemError).index,
      code: (err as EnqueueItemError).code,
    }).toEqual({
      index,
      code: "HF002",
    });
    expect((err as Error).message).toMatch(message);
    expect((err as Error).message).toContain(`tasks[${index}]`);
  }
  expect(await counts()).toEqual(before);
  // From SQL: the index is in the error's detail, and a wrong shape is named too.
  const sqlCases: Array<[unknown[], number, RegExp]> = [
    [[{ key: "a" }, { key: 5 }], 1, /key must be a string/],
    [[{ key: "a" }, { key: "b" }, 3], 2, /object/],
    [[{ key: "a", dedupeKey: "x" }], 0, /unknown field 'dedupeKey'/],
    [[{ key: "a" }, { key: "b", priority: "high" }], 1, /priority/],
    [[{ key: "a" }, { key: "b", run_at: "soon" }], 1, /timestamp/],
    [[{ key: "a" }, { key: "b", max_attempts: 3e10 }], 1, /range/],
  ];
  for (const [batch, index, message] of sqlCases) {
    const e = await t.db.pool
      .query("select * from holdfast.enqueue_many('bulk', $1::jsonb)", [JSON.stringify(batch)])
      .catch((err: { code: string; detail: string; message: string }) => err);
    expect(e).toMatchObject({ code: "HF002", message: expect.stringMatching(message) });
    expect(JSON.parse((e as { detail: string }).detail)).toEqual({ index });
  }
  expect(await counts()).toEqual(before);
  // A dedupe key pending on another key.
  await t.hf.enqueue("bulk", { key: "owner", dedupeKey: "taken" });
  const before2 = await counts();
  const sqlErr = await t.db.pool
    .query("select * from holdfast.enqueue_many('bulk', $1::jsonb)", [
      JSON.stringify([{ key: "a1" }, { key: "other", dedupe_key: "taken" }]),
    ])
    .catch((e: { code: string; detail: string }) => e);
  expect(sqlErr).toMatchObject({ code: "HF002" });
  expect(JSON.parse((sqlErr as { detail: string }).detail)).toEqual({ index: 1 });
  expect(await counts()).toEqual(before2);
  expect(before2.tasks).toBe(before.tasks + 1);

  const unknown = await t.hf.enqueueMany("nope", [good(0)]).catch((e: unknown) => e);
  expect(unknown).toBeInstanceOf(UnknownKindError);
  expect(await t.hf.enqueueMany("bulk", [])).toEqual([]);
});

it("10,000 items in one statement, ids in input order", async () => {
  const batch = Array.from({ length: 10_000 }, (_, i) => ({
    key: `big:${i % 250}`,
    payload: { i },
  }));
  // Counted on the client: one round trip whatever the number of items.
  const client = await t.db.session();
  let statements = 0;
  const query = client.query.bind(client);
  client.query = ((...args: Parameters<typeof query>) => {
    statements++;
    return query(...args);
  }) as typeof client.query;
  await client.query("begin");
  statements = 0;
  const results = await t.hf.enqueueMany("big", batch, { client });
  expect(statements).toBe(1);
  await client.query("commit");
  expect(results).toHaveLength(10_000);
  const ids = results.map((r) => r.id);
  expect(ids).toEqual([...ids].sort((a, b) => a - b));
  const { rows } = await t.db.pool.query(
    "select count(*)::int as n, count(distinct key)::int as keys from holdfast.tasks where kind = 'big'",
  );
  expect(rows[0]).toEqual({ n: 10_000, keys: 250 });
  // Each key's head is its first task of the batch.
  const heads = await t.db.pool.query(
    `select count(*)::int as wrong from holdfast.keys k where k.key like 'big:%'
     and k.head_id <> (select min(id) from holdfast.tasks t where t.key = k.key)`,
  );
  expect(heads.rows[0].wrong).toBe(0);
});

it("concurrent batches over the same keys, in different orders, all land (no deadlock)", async () => {
  const keys = Array.from({ length: 50 }, (_, i) => `cc:${i}`);
  const batch = (b: number) =>
    Array.from({ length: 200 }, (_, i) => ({
      key: keys[(i * (b + 1) * 7 + b) % keys.length] as string,
      payload: { b, i },
    })).reverse();
  const results = await Promise.all([0, 1, 2, 3].map((b) => t.hf.enqueueMany("bulk", batch(b))));
  expect(results.flat()).toHaveLength(800);
  const { rows } = await t.db.pool.query(
    "select count(*)::int as n from holdfast.tasks where key like 'cc:%'",
  );
  expect(rows[0].n).toBe(800);
});
