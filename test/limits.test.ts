// Limits in one process (guarantee 9): bad input, admission from plain SQL, what a charge does
// to later starts, a throttle across workers, order per key while waiting, and a full limit
// that must not hold up a worker's other kinds, and what inspect, metrics and logs show.
// Crashes and several processes: limits-crash.
import type pg from "pg";
import { expect, it } from "vitest";
import { Holdfast, InvalidArgumentError, type Task, ThrottledError } from "../src/index.js";
import { formatSnapshot } from "../src/inspect/format.js";
import { takeSnapshot } from "../src/inspect/index.js";
import { HoldfastMetrics } from "../src/metrics.js";
import { waitEvent } from "./lock-loss/support.js";
import { useHoldfast } from "./support/db.js";
import { assertInspectShape } from "./support/inspect-schema.js";
import { captureLogger } from "./support/log-capture.js";
import { until } from "./support/wait.js";

const t = useHoldfast({ free: {} });

interface Claimed {
  id: string;
  key: string;
  kind: string;
  fence: string;
}

async function claim(session: pg.Client, kinds: string[], n = 10): Promise<Claimed[]> {
  const { rows } = await session.query<Claimed>(
    "select id, key, kind, fence from holdfast.claim($1::text[], 'psql', $2, $2)",
    [kinds, n],
  );
  return rows;
}

async function sqlError(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return undefined;
}

it("bad limits, reservations and charges are refused with typed errors and write nothing", async () => {
  const { hf, db } = t;
  const bad: Array<[number, string | number]> = [
    [0, "1 minute"],
    [-5, "1 minute"],
    [1.5, "1 minute"],
    [10, 0],
    [10, "0 seconds"],
    [10, "-1 minute"],
    [10, "soon"],
  ];
  for (const [units, per] of bad)
    await expect(hf.defineLimit("bad", { units, per })).rejects.toBeInstanceOf(
      InvalidArgumentError,
    );
  expect(await sqlError(db.pool.query("select holdfast.define_limit('bad', 0, '1 minute')"))).toBe(
    "HF002",
  );
  expect(await sqlError(db.pool.query("select holdfast.define_limit('bad', 5, '0')"))).toBe(
    "HF002",
  );
  expect((await db.pool.query("select 1 from holdfast.limits where name = 'bad'")).rowCount).toBe(
    0,
  );

  await hf.defineLimit("ten", { units: 10, per: "1 minute" });
  await expect(hf.defineKind("bad-kind", { limits: { nope: 1 } })).rejects.toBeInstanceOf(
    InvalidArgumentError,
  );
  await expect(hf.defineKind("bad-kind", { limits: { ten: 11 } })).rejects.toBeInstanceOf(
    InvalidArgumentError,
  );
  await expect(hf.defineKind("bad-kind", { limits: { ten: 0 } })).rejects.toBeInstanceOf(
    InvalidArgumentError,
  );
  expect(
    await sqlError(
      db.pool.query(`select holdfast.define_kind('bad-kind', limits => '{"ten": -1}')`),
    ),
  ).toBe("HF002");
  // The kind itself was not created either: define_kind is one statement.
  expect(
    (await db.pool.query("select 1 from holdfast.kinds where kind = 'bad-kind'")).rowCount,
  ).toBe(0);

  await hf.defineKind("ten-kind", { limits: { ten: 6 } });
  // Lowering the limit under a kind's reservation would leave that kind unable to start.
  await expect(hf.defineLimit("ten", { units: 5, per: "1 minute" })).rejects.toBeInstanceOf(
    InvalidArgumentError,
  );
  const { id } = await hf.enqueue("ten-kind", { key: "bad:charge" });
  const s = await db.session();
  const [run] = await claim(s, ["ten-kind"]);
  expect(run?.id).toBe(String(id));
  expect(
    await sqlError(s.query("select holdfast.charge($1, $2, 'ten', -1)", [id, run?.fence])),
  ).toBe("HF002");
  expect(
    await sqlError(s.query("select holdfast.charge($1, $2, 'nope', 1)", [id, run?.fence])),
  ).toBe("HF002");
  const [usage] = (await hf.limits()).filter((l) => l.name === "ten");
  expect(usage).toMatchObject({ units: 10, used: 6, reserved: 6, charged: 0 });
  await s.query("select holdfast.complete($1, $2)", [id, run?.fence]);
});

it("a claim from psql obeys the limit: a task without room stays pending in its place, no attempt counted, and the claim says when room frees", async () => {
  const { hf, db } = t;
  await hf.defineLimit("sql-requests", { units: 2, per: "1 hour" });
  await hf.defineKind("sql-kind", { limits: { "sql-requests": 1 } });
  const ids = [];
  for (const key of ["sql:a", "sql:b", "sql:c"])
    ids.push((await hf.enqueue("sql-kind", { key })).id);
  const free = await hf.enqueue("free", { key: "sql:free" });
  const s = await db.session();
  const got = await claim(s, ["sql-kind", "free"]);
  expect(got.map((r) => Number(r.id)).sort()).toEqual([ids[0], ids[1], free.id].sort());
  expect(await claim(s, ["sql-kind", "free"])).toEqual([]);
  const { rows } = await db.pool.query<{ state: string; attempt: number; wait_s: number }>(
    `select state, attempt, extract(epoch from holdfast.next_run_at(array['sql-kind']) - now())
       as wait_s from holdfast.tasks where id = $1`,
    [ids[2]],
  );
  expect(rows[0]?.state).toBe("pending");
  expect(rows[0]?.attempt).toBe(0);
  expect(Number(rows[0]?.wait_s)).toBeGreaterThan(3500); // the oldest run leaves in an hour
  const [usage] = (await hf.limits()).filter((l) => l.name === "sql-requests");
  expect(usage).toMatchObject({ used: 2, runs: 2, waiting: 1 });
  expect(usage?.roomAt?.getTime()).toBeGreaterThan(Date.now() + 3_500_000);
  for (const r of got) await s.query("select holdfast.complete($1, $2)", [r.id, r.fence]);
  // Finishing does not give the units back: the window still holds both starts.
  expect(await claim(s, ["sql-kind"])).toEqual([]);
});

it("a charge replaces the reservation: above it, later starts wait; below it, room frees at once and the kind's workers are told", async () => {
  const { hf, db } = t;
  await hf.defineLimit("tokens", { units: 10, per: "1 hour" });
  await hf.defineKind("tok", { limits: { tokens: 4 } });
  const s = await db.session();
  const a = await hf.enqueue("tok", { key: "tok:a" });
  await hf.enqueue("tok", { key: "tok:b" });
  const [ra] = await claim(s, ["tok"], 1);
  expect(ra?.id).toBe(String(a.id));
  // Reserved 4 of 10: another run of 4 would fit; the call really spent 9.
  await s.query("select holdfast.charge($1, $2, 'tokens', 9)", [ra?.id, ra?.fence]);
  expect(await claim(s, ["tok"], 1)).toEqual([]);
  const [usage] = (await hf.limits()).filter((l) => l.name === "tokens");
  expect(usage).toMatchObject({ used: 9, reserved: 0, charged: 9 });

  // A stale fence or an ended run is a zombie's charge: refused, nothing changes.
  const stale = await s.query<{ ok: boolean }>(
    "select holdfast.charge($1, $2, 'tokens', 0) as ok",
    [ra?.id, Number(ra?.fence) - 1],
  );
  expect(stale.rows[0]?.ok).toBe(false);

  // Below the reservation: room frees now, and a NOTIFY wakes the kind's workers.
  await hf.defineLimit("tokens2", { units: 10, per: "1 hour" });
  await hf.defineKind("tok2", { limits: { tokens2: 6 } });
  const c = await hf.enqueue("tok2", { key: "tok2:c" });
  const d = await hf.enqueue("tok2", { key: "tok2:d" });
  const [rc] = await claim(s, ["tok2"]);
  expect(rc?.id).toBe(String(c.id));
  const listener = await db.session();
  await listener.query("listen holdfast");
  const told = new Promise<string | undefined>((resolve) =>
    listener.on("notification", (n) => {
      if (n.payload === "tok2") resolve(n.payload);
    }),
  );
  await s.query("select holdfast.charge($1, $2, 'tokens2', 1)", [rc?.id, rc?.fence]);
  expect(await told).toBe("tok2");
  const [rd] = await claim(s, ["tok2"]);
  expect(rd?.id).toBe(String(d.id));
  await s.query("select holdfast.complete($1, $2)", [rc?.id, rc?.fence]);
  const ended = await s.query<{ ok: boolean }>(
    "select holdfast.charge($1, $2, 'tokens2', 5) as ok",
    [rc?.id, rc?.fence],
  );
  expect(ended.rows[0]?.ok).toBe(false);
});

it("a ThrottledError closes the limit for every worker until it reopens and hands the run back without spending an attempt", async () => {
  const { hf, db } = t;
  await db.pool.query("create table throttle_starts (id bigint, attempt int, at timestamptz)");
  await hf.defineLimit("provider", { units: 100, per: "1 minute" });
  await hf.defineKind("th", { limits: { provider: 1 } });
  const log = captureLogger();
  const hf2 = new Holdfast({ pool: db.pool, logger: log.logger });
  let throws = 1;
  const handler = async (task: Task) => {
    await db.pool.query("insert into throttle_starts values ($1, $2, clock_timestamp())", [
      task.id,
      task.attempt,
    ]);
    if (throws-- > 0) throw new ThrottledError("provider", 1_500);
  };
  const w1 = hf2.worker({ name: "th-1", handlers: { th: handler } });
  const w2 = hf.worker({ name: "th-2", handlers: { th: handler } });
  await w1.start();
  const a = await hf.enqueue("th", { key: "th:a" });
  const [, info] = await waitEvent(w1, "task:end", (task) => task.id === a.id);
  expect(info.outcome).toBe("throttled");
  // While closed, nothing of the limit starts on either worker (w2 starts meanwhile).
  await w2.start();
  const more = [await hf.enqueue("th", { key: "th:b" }), await hf.enqueue("th", { key: "th:c" })];
  const all = [a.id, ...more.map((m) => m.id)];
  await until(
    async () => {
      const { rows } = await db.pool.query<{ n: number }>(
        "select count(*)::int as n from holdfast.tasks where id = any ($1) and state = 'succeeded'",
        [all],
      );
      return rows[0]?.n === 3;
    },
    20_000,
    "every task succeeded after the limit reopened",
  );
  const { rows } = await db.pool.query<{ id: string; attempt: number; after: boolean }>(
    `select s.id, s.attempt, s.at >= l.closed_until as after
     from throttle_starts s, holdfast.limits l where l.name = 'provider' order by s.at`,
  );
  // The throttled run, then three runs once the limit reopened; task a's second run is still
  // its first attempt.
  expect(rows.map((r) => [Number(r.id), r.attempt, r.after])).toEqual([
    [a.id, 1, false],
    ...rows.slice(1).map((r) => [Number(r.id), 1, true]),
  ]);
  expect(
    rows
      .slice(1)
      .map((r) => Number(r.id))
      .sort(),
  ).toEqual(all.sort());
  const attempts = await db.pool.query("select 1 from holdfast.attempts where task_id = $1", [
    a.id,
  ]);
  expect(attempts.rowCount).toBe(1); // its success only
  await Promise.all([w1.stop(), w2.stop()]);
  await hf2.close();
  const throttled = log.lines.filter((l) => l.event === "task_throttled");
  expect(throttled).toMatchObject([{ limit: "provider", retryAfterMs: 1_500, task: a.id }]);
});

it("runs of one key start in the key's order while they wait for room", async () => {
  const { hf, db } = t;
  await hf.defineLimit("ordered", { units: 1, per: "300 milliseconds" });
  await hf.defineKind("ord", { limits: { ordered: 1 } });
  const started: Array<{ key: string; seq: number; at: number }> = [];
  const w = hf.worker({
    concurrency: 3,
    handlers: {
      ord: async (task: Task<{ seq: number }>) => {
        const { rows } = await db.pool.query<{ ms: number }>(
          "select extract(epoch from at) * 1000 as ms from holdfast.limit_runs where key = $1 and fence = $2",
          [task.key, task.fence],
        );
        started.push({ key: task.key, seq: task.payload.seq, at: Number(rows[0]?.ms) });
      },
    },
  });
  const ids: number[] = [];
  for (let seq = 0; seq < 4; seq++)
    for (const key of ["ord:k", "ord:l"])
      ids.push((await hf.enqueue("ord", { key, payload: { seq } })).id);
  await w.start();
  await until(() => started.length === ids.length, 20_000, "every run started");
  await w.stop();
  for (const key of ["ord:k", "ord:l"])
    expect(started.filter((s) => s.key === key).map((s) => s.seq)).toEqual([0, 1, 2, 3]);
  const at = started.map((s) => s.at).sort((x, y) => x - y);
  for (let i = 1; i < at.length; i++)
    expect((at[i] as number) - (at[i - 1] as number)).toBeGreaterThanOrEqual(300);
  const { rows } = await db.pool.query<{ n: number }>(
    "select max(attempt) as n from holdfast.tasks where id = any ($1)",
    [ids],
  );
  expect(rows[0]?.n).toBe(1); // waiting for room is not an attempt
});

it("a kind whose limit is full does not hold up the worker's other kinds", async () => {
  const { hf } = t;
  await hf.defineLimit("full", { units: 1, per: "1 hour" });
  await hf.defineKind("fk", { limits: { full: 1 } });
  const first = await hf.enqueue("fk", { key: "fk:1" });
  const w = hf.worker({ concurrency: 1, handlers: { fk: async () => {}, free: async () => {} } });
  await w.start();
  await waitEvent(w, "task:end", (task) => task.id === first.id);
  // Older and ahead in claim order, but out of room for an hour.
  await hf.enqueue("fk", { key: "fk:2" });
  const free = await hf.enqueue("free", { key: "fk:free" });
  const [, info] = await waitEvent(w, "task:end", (task) => task.id === free.id, 5_000);
  expect(info.outcome).toBe("succeeded");
  await w.stop();
});

it("inspect, the metrics and the logs show a limit's window, the tasks waiting on it and the run admitted after waiting", async () => {
  const { hf, db } = t;
  await hf.defineLimit("shown", { units: 5, per: "1 hour" });
  await hf.defineKind("sh", { limits: { shown: 2 } });
  const log = captureLogger();
  const hfLogged = new Holdfast({ pool: db.pool, logger: log.logger });
  const w = hfLogged.worker({ name: "sh-1", concurrency: 3, handlers: { sh: async () => {} } });
  await w.start();
  const ids = [];
  for (const key of ["sh:a", "sh:b", "sh:c"]) ids.push((await hf.enqueue("sh", { key })).id);
  // Two runs of 2 fit in 5; the third waits an hour for the first to leave the window.
  await until(
    () => log.lines.some((l) => l.event === "limit_wait" && l.limit === "shown"),
    10_000,
    "limit_wait logged",
  );
  const client = await db.pool.connect();
  const snap = await takeSnapshot(client, { kind: "sh" }).finally(() => client.release());
  assertInspectShape(JSON.parse(JSON.stringify(snap)));
  expect(snap.limits).toMatchObject([
    { name: "shown", units: 5, used: 4, reserved: 4, charged: 0, runs: 2, waiting: 1 },
  ]);
  expect(Date.parse(snap.limits[0]?.roomAt ?? "")).toBeGreaterThan(Date.now() + 3_500_000);
  expect(formatSnapshot(snap)).toMatch(/LIMITS \(1\)\n.*\n\s*shown\s+4\s+5\s/);
  const metrics = new HoldfastMetrics(db.pool);
  const text = await metrics.text();
  expect(text).toContain('holdfast_limit_units{limit="shown",state="reserved"} 4');
  expect(text).toContain('holdfast_limit_waiting_tasks{limit="shown"} 1');

  // Room made (a larger limit notifies the kind's workers): the third run starts at once.
  await hf.defineLimit("shown", { units: 6, per: "1 hour" });
  await until(
    () => log.lines.find((l) => l.event === "limit_admitted" && l.limit === "shown"),
    10_000,
    "limit_admitted logged",
  );
  await w.stop();
  await hfLogged.close();
});

it("a throttle after a cancel request hands nothing back, and a run given back unstarted returns its reservation", async () => {
  const { hf, db } = t;
  await hf.defineLimit("edge", { units: 1, per: "1 hour" });
  await hf.defineKind("edge-kind", { limits: { edge: 1 } });
  const s = await db.session();
  const a = await hf.enqueue("edge-kind", { key: "edge:a" });
  const [ra] = await claim(s, ["edge-kind"]);
  expect(ra?.id).toBe(String(a.id));
  await hf.cancel(a.id); // running: a cancel request the worker has not seen yet
  const throttled = await s.query<{ ok: boolean }>(
    "select holdfast.throttle($1, $2, 'edge', now() + interval '1 minute') as ok",
    [a.id, ra?.fence],
  );
  expect(throttled.rows[0]?.ok).toBe(false); // the worker reports it with fail() instead
  await s.query("select holdfast.fail($1, $2, 'throttled')", [a.id, ra?.fence]);
  const { rows } = await db.pool.query<{ state: string }>(
    "select state from holdfast.tasks where id = $1",
    [a.id],
  );
  expect(rows[0]?.state).toBe("cancelled");
  const [closed] = (await hf.limits()).filter((l) => l.name === "edge");
  expect(closed?.closedUntil).toBeNull();

  // Claimed ahead (start_keys 0: not started) and released: the window is empty again.
  await hf.defineLimit("edge2", { units: 1, per: "1 hour" });
  await hf.defineKind("edge2-kind", { limits: { edge2: 1 } });
  const b = await hf.enqueue("edge2-kind", { key: "edge:b" });
  const ahead = await s.query<Claimed>(
    "select id, key, kind, fence from holdfast.claim(array['edge2-kind'], 'psql', 1, 1, 0)",
  );
  expect(ahead.rows[0]?.id).toBe(String(b.id));
  const [held] = (await hf.limits()).filter((l) => l.name === "edge2");
  expect(held?.used).toBe(1);
  await s.query("select holdfast.release($1::bigint[], $2::bigint[])", [
    [b.id],
    [ahead.rows[0]?.fence],
  ]);
  const [freed] = (await hf.limits()).filter((l) => l.name === "edge2");
  expect(freed?.used).toBe(0);
  expect((await claim(s, ["edge2-kind"]))[0]?.id).toBe(String(b.id));
});
