// assert_fence against a takeover claim: a handler's write transaction either commits before
// the new fence exists or is rejected, never after. SQL only, on raw sessions.
import pg from "pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Holdfast } from "../../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "../support/db.js";

let db: TestDatabase;
let holder: pg.Client; // the first run's lock session
let taker: pg.Client; // the session that takes the key over
let writer: pg.Client; // the first run's own write transaction (the app's connection)

const connect = async (name: string) => {
  const c = new pg.Client({ connectionString: db.url, application_name: name });
  await c.connect();
  return c;
};

beforeAll(async () => {
  db = await freshDatabase();
  await db.pool.query("create table effects (key text, fence bigint)");
  const hf = new Holdfast({ pool: db.pool, logger: silent });
  await hf.defineKind("job");
  await hf.close();
  [holder, taker, writer] = (await Promise.all(["holder", "taker", "writer"].map(connect))) as [
    pg.Client,
    pg.Client,
    pg.Client,
  ];
});

afterAll(async () => {
  await Promise.all([holder, taker, writer].map((c) => c?.end()));
  await db.drop();
});

const claim = async (c: pg.Client) =>
  (
    await c.query<{ id: string; fence: string }>(
      "select id, fence from holdfast.claim(array['job'], 'w', 1)",
    )
  ).rows[0];

/** A task of `key` claimed by `holder` (fence f1), then given up (fail, retry at once) without a
 *  new claim: the state of a run whose lock was lost, before anyone takes the key over. */
async function lostRun(key: string): Promise<number> {
  await db.pool.query("select holdfast.enqueue('job', $1, '{}')", [key]);
  const row = await claim(holder);
  if (!row) throw new Error("holder claimed nothing");
  await holder.query("select holdfast.fail($1, $2, 'lost', interval '0')", [row.id, row.fence]);
  return Number(row.fence);
}

async function guardedWrite(
  key: string,
  fence: number,
  holdMs: number,
): Promise<"committed" | "rejected"> {
  try {
    await writer.query("begin");
    await writer.query("select holdfast.assert_fence($1, $2)", [key, fence]);
    await writer.query("insert into effects values ($1, $2)", [key, fence]);
    if (holdMs > 0) await writer.query("select pg_sleep($1)", [holdMs / 1000]);
    await writer.query("commit");
    return "committed";
  } catch (err) {
    await writer.query("rollback");
    if ((err as { code?: string }).code === "HF004") return "rejected";
    throw err;
  }
}

const effects = async (key: string, fence: number) =>
  Number(
    (await taker.query("select count(*) from effects where key = $1 and fence = $2", [key, fence]))
      .rows[0].count,
  );

it("an open fenced write makes the takeover claim skip the key until it commits", async () => {
  const f1 = await lostRun("race:open");
  await writer.query("begin");
  await writer.query("select holdfast.assert_fence('race:open', $1)", [f1]);
  await writer.query("insert into effects values ('race:open', $1)", [f1]);
  expect(await claim(taker)).toBeUndefined(); // key row held by the write: skipped, not blocked
  await writer.query("commit");
  const taken = await claim(taker);
  expect(Number(taken?.fence)).toBeGreaterThan(f1);
  expect(await effects("race:open", f1)).toBe(1);
  expect(await guardedWrite("race:open", f1, 0)).toBe("rejected");
  await taker.query("select holdfast.complete($1, $2)", [taken?.id, taken?.fence]);
});

it("a fenced write after the takeover claim is rejected", async () => {
  const f1 = await lostRun("race:late");
  const taken = await claim(taker);
  expect(Number(taken?.fence)).toBeGreaterThan(f1);
  expect(await guardedWrite("race:late", f1, 0)).toBe("rejected");
  expect(await effects("race:late", f1)).toBe(0);
  await taker.query("select holdfast.complete($1, $2)", [taken?.id, taken?.fence]);
});

it("racing a takeover claim, a fenced write commits before the new fence or not at all", async () => {
  const outcomes = { committed: 0, rejected: 0 };
  for (let i = 0; i < 40; i++) {
    const key = `race:${i}`;
    const f1 = await lostRun(key);
    const jitter = (n: number) => new Promise((r) => setTimeout(r, Math.random() * n));
    const write = jitter(15).then(() => guardedWrite(key, f1, 10));
    // The takeover retries while the key row is held, like a worker woken again would.
    const takeover = jitter(15).then(async () => {
      for (;;) {
        const row = await claim(taker);
        if (row) return { row, seen: await effects(key, f1) };
      }
    });
    const [outcome, { row, seen }] = await Promise.all([write, takeover]);
    outcomes[outcome]++;
    // Whatever the claim's session saw right after its commit is all there will ever be.
    expect(await effects(key, f1)).toBe(seen);
    expect(seen).toBe(outcome === "committed" ? 1 : 0);
    expect(Number(row.fence)).toBeGreaterThan(f1);
    await taker.query("select holdfast.complete($1, $2)", [row.id, row.fence]);
  }
  console.log(
    `assert_fence race: ${outcomes.committed} committed before the takeover, ${outcomes.rejected} rejected`,
  );
  expect(outcomes.committed + outcomes.rejected).toBe(40);
});
