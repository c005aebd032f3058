import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { check, createHistoryCopies, watchSessions } from "../bench/chaos/check.js";
import { drain } from "../bench/chaos/progress.js";
import { freshDatabase, type TestDatabase } from "./support/db.js";
import { until } from "./support/wait.js";

// The chaos checker must be able to fail: feed it logs that break each property.
let db: TestDatabase;
beforeAll(async () => {
  db = await freshDatabase();
  await db.pool.query(`create table chaos_log (
    task_id bigint not null, key text not null, attempt int not null, fence bigint not null,
    worker text not null, started_at timestamptz not null, ended_at timestamptz)`);
  await db.pool.query("select holdfast.define_kind('short')");
  await createHistoryCopies(db.pool);
});
afterAll(async () => await db?.drop());

describe("chaos checker", () => {
  it("reports two overlapping runs of a key, a fence going backwards, and an unfinished task", async () => {
    const id = (await db.pool.query<{ id: string }>("select holdfast.enqueue('short', 'k1') as id"))
      .rows[0]?.id;
    await db.pool.query(
      `insert into chaos_log values
         ($1, 'k1', 1, 20, 'w1', '2026-01-01 00:00:00+00', '2026-01-01 00:00:10+00'),
         ($1, 'k1', 2, 10, 'w2', '2026-01-01 00:00:05+00', '2026-01-01 00:00:06+00'),
         ($1, 'k1', 3, 30, 'w3', '2026-01-01 00:00:20+00', null)`,
      [id],
    );
    const result = await check(db.pool, () => undefined);
    const kinds = result.violations.map((v) => v.kind).sort();
    expect(kinds).toEqual(["fence-order", "not-ended", "overlap"]);
    // Slow or stuck: the unfinished task's time in state and its key's last progress.
    expect(result.violations.find((v) => v.kind === "not-ended")?.detail).toMatch(
      /^task \d+ is still pending \(for \d+ s\); its key k1 last progressed \d+ s ago$/,
    );
  });

  it("closes a run without an end at the time its handler exited", async () => {
    await db.pool.query("truncate chaos_log");
    await db.pool.query("update holdfast.tasks set state = 'cancelled'");
    await db.pool.query(
      `insert into chaos_log values
         (1, 'k2', 1, 10, 'w1', '2026-01-01 00:00:00+00', null),
         (1, 'k2', 2, 20, 'w2', '2026-01-01 00:00:05+00', '2026-01-01 00:00:06+00')`,
    );
    const exitAt = Date.parse("2026-01-01T00:00:04Z");
    const ok = await check(db.pool, () => exitAt);
    expect(ok.violations.filter((v) => v.kind === "overlap")).toEqual([]);
    const late = await check(db.pool, () => exitAt + 2_000);
    expect(late.violations.filter((v) => v.kind === "overlap")).toHaveLength(1);
  });

  it("reports more runs of a capped kind at once than its max_running", async () => {
    await db.pool.query("truncate chaos_log");
    await db.pool.query("select holdfast.define_kind('capped', max_running => 2)");
    const ids: string[] = [];
    for (const k of ["c1", "c2", "c3"])
      ids.push(
        (await db.pool.query("select holdfast.enqueue('capped', $1) as id", [k])).rows[0].id,
      );
    const insert = (times: Array<[string, string]>) =>
      db.pool.query(
        `insert into chaos_log
         select id, 'c' || n, 1, n, 'w1', s::timestamptz, e::timestamptz
         from unnest($1::bigint[], $2::text[], $3::text[]) with ordinality as x (id, s, e, n)`,
        [ids, times.map((t) => t[0]), times.map((t) => t[1])],
      );
    // Two at once, the third starting as the first ends: within the cap.
    await insert([
      ["2026-01-01 00:00:00+00", "2026-01-01 00:00:10+00"],
      ["2026-01-01 00:00:05+00", "2026-01-01 00:00:20+00"],
      ["2026-01-01 00:00:10+00", "2026-01-01 00:00:30+00"],
    ]);
    const ok = await check(db.pool, () => undefined);
    expect(ok.violations.filter((v) => v.kind === "over-cap")).toEqual([]);
    await db.pool.query(
      "update chaos_log set started_at = '2026-01-01 00:00:09+00' where key = 'c3'",
    );
    const over = await check(db.pool, () => undefined);
    expect(over.violations.filter((v) => v.kind === "over-cap")).toHaveLength(1);
  });

  it("reports a worker with two sessions of one kind for longer than the server's bound", async () => {
    const open = async () => {
      const c = new pg.Client({ connectionString: db.url, application_name: "holdfast:lock:w9.1" });
      await c.connect();
      return c;
    };
    const [a, b] = [await open(), await open()];
    try {
      // A second session that the server frees within the bound is allowed.
      const patient = watchSessions(db.pool, 60_000, 50);
      const strict = watchSessions(db.pool, 200, 50);
      const [violation] = await until(() => strict.seen().length > 0 && strict.seen());
      expect(violation?.detail).toMatch(/^2 sessions named holdfast:lock:w9\.1 for \d+ ms/);
      await b.end();
      expect(await patient.stop()).toEqual([]);
      expect(await strict.stop()).toHaveLength(1);
    } finally {
      await a.end();
      await b.end().catch(() => {});
    }
  });
});

describe("chaos checker: order per key", () => {
  it("reports a later task of a key that started before an earlier one's last run, and accepts the right order", async () => {
    await db.pool.query("truncate chaos_log");
    await db.pool.query("update holdfast.tasks set state = 'cancelled'");
    const enq = async () =>
      Number(
        (await db.pool.query<{ id: string }>("select holdfast.enqueue('short', 'k3') as id"))
          .rows[0]?.id,
      );
    const [a, b] = [await enq(), await enq()];
    await db.pool.query("update holdfast.tasks set state = 'succeeded' where id = any ($1)", [
      [a, b],
    ]);
    // a's attempt 1 is lost, b runs, then a's attempt 2: b passed a.
    await db.pool.query(
      `insert into chaos_log values
         ($1, 'k3', 1, 10, 'w1', '2026-01-01 00:00:00+00', '2026-01-01 00:00:01+00'),
         ($2, 'k3', 1, 20, 'w2', '2026-01-01 00:00:02+00', '2026-01-01 00:00:03+00'),
         ($1, 'k3', 2, 30, 'w2', '2026-01-01 00:00:04+00', '2026-01-01 00:00:05+00')`,
      [a, b],
    );
    const bad = await check(db.pool, () => undefined);
    expect(bad.violations.filter((v) => v.kind === "order")).toHaveLength(1);
    await db.pool.query(
      "update chaos_log set started_at = started_at + interval '10 s' where task_id = $1",
      [b],
    );
    await db.pool.query(
      "update chaos_log set ended_at = ended_at + interval '10 s' where task_id = $1",
      [b],
    );
    const good = await check(db.pool, () => undefined);
    expect(good.violations.filter((v) => v.kind === "order")).toEqual([]);
  });
});

describe("chaos drain: slow is not stuck", () => {
  it("a key that keeps making progress drains; a key without progress for the bound is reported stuck, with its oldest task's time in state", async () => {
    const d = await freshDatabase();
    try {
      await d.pool.query("select holdfast.define_kind('slow')");
      await createHistoryCopies(d.pool);
      // A slow backlog: one task of key s ends every 300 ms, 6 in all (1.8 s > stuckMs).
      await d.pool.query("select holdfast.enqueue('slow', 's') from generate_series(1, 6)");
      const worker = (async () => {
        const c = await d.pool.connect();
        try {
          for (let i = 0; i < 6; i++) {
            await new Promise((r) => setTimeout(r, 300));
            const { rows } = await c.query<{ id: string; fence: string }>(
              "select id, fence from holdfast.claim(array['slow'], 'slow-worker')",
            );
            await c.query("select holdfast.complete($1, $2)", [rows[0]?.id, rows[0]?.fence]);
          }
        } finally {
          c.release();
        }
      })();
      const slow = await drain(d.pool, { stuckMs: 1_000, maxMs: 20_000, pollMs: 100 });
      await worker;
      expect(slow.violations).toEqual([]);
      expect(slow.ms).toBeGreaterThan(1_000);

      // Nobody runs key z's task: no progress, so stuck after 1 s, whatever the cap.
      await d.pool.query("select holdfast.enqueue('slow', 'z')");
      const stuck = await drain(d.pool, { stuckMs: 1_000, maxMs: 20_000, pollMs: 100 });
      expect(stuck.violations.map((v) => v.kind)).toEqual(["stuck"]);
      expect(stuck.violations[0]?.detail).toMatch(/^key z: 1 unfinished, .* pending for \d+ s$/);
      expect(stuck.ms).toBeLessThan(20_000);
    } finally {
      await d.drop();
    }
  });
});
