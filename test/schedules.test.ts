import { describe, expect, it } from "vitest";
import { startDashboard } from "../src/dashboard/server.js";
import { Holdfast, InvalidArgumentError, UnknownKindError } from "../src/index.js";
import { takeSnapshot } from "../src/inspect/index.js";
import { runCli } from "./support/cli.js";
import { freshDatabase, silent, useHoldfast } from "./support/db.js";
import { useWorkerProcesses } from "./support/processes.js";
import { until } from "./support/wait.js";

describe("declaring schedules", () => {
  const t = useHoldfast({ compact: {} });

  it("is idempotent, updates a changed definition, and lists each schedule's next tick", async () => {
    const { hf } = t;
    const def = { cron: "0 3 * * *", kind: "compact", key: "all", payload: { deep: true } };
    expect(await hf.schedule("nightly", def)).toBe(true);
    expect(await hf.schedule("nightly", def)).toBe(false);
    expect(await hf.schedule("nightly", { ...def, timezone: "Europe/Berlin" })).toBe(true);
    const [s] = await hf.schedules();
    expect(s).toMatchObject({ name: "nightly", cron: "0 3 * * *", timezone: "Europe/Berlin" });
    expect(s?.payload).toEqual({ deep: true });
    // 03:00 in Berlin is 01:00 or 02:00 UTC, within the next day.
    const next = s?.nextAt ?? new Date(0);
    expect([1, 2]).toContain(next.getUTCHours());
    expect(next.getTime() - Date.now()).toBeGreaterThan(0);
    expect(next.getTime() - Date.now()).toBeLessThanOrEqual(24 * 3600_000);
    expect(await hf.unschedule("nightly")).toBe(true);
    expect(await hf.unschedule("nightly")).toBe(false);
    expect(await hf.schedules()).toEqual([]);
  });

  it("rejects an invalid cron expression or time zone, and an unknown kind", async () => {
    const { hf } = t;
    await expect(
      hf.schedule("bad", { cron: "61 * * * *", kind: "compact", key: "k" }),
    ).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(
      hf.schedule("bad", { cron: "* * * * *", kind: "compact", key: "k", timezone: "Mars/Base" }),
    ).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(
      hf.schedule("bad", { cron: "* * * * *", kind: "nope", key: "k" }),
    ).rejects.toBeInstanceOf(UnknownKindError);
  });

  it("the CLI lists schedules with their next tick and removes one", async () => {
    const { hf, db } = t;
    await hf.schedule("hourly", { cron: "0 * * * *", kind: "compact", key: "all" });
    const list = await runCli(["schedules", "--database", db.url]);
    expect(list.code).toBe(0);
    const [row] = list.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
    expect(row).toMatchObject({ name: "hourly", cron: "0 * * * *", kind: "compact", key: "all" });
    expect(new Date(row.nextAt).getUTCMinutes()).toBe(0);
    const removed = await runCli(["unschedule", "hourly", "--database", db.url]);
    expect(JSON.parse(removed.stdout)).toEqual({ name: "hourly", removed: true });
    expect(await hf.schedules()).toEqual([]);
  });

  it("works from SQL alone", async () => {
    const { db } = t;
    await db.pool.query(
      "select holdfast.schedule('sql', '*/5 * * * *', 'compact', 'all', '{\"x\": 1}')",
    );
    const { rows } = await db.pool.query("select name, cron, kind from holdfast.schedules()");
    expect(rows).toEqual([{ name: "sql", cron: "*/5 * * * *", kind: "compact" }]);
    await db.pool.query("select holdfast.unschedule('sql')");
  });
});

describe("missed ticks", () => {
  it("a schedule that missed ticks while no worker ran catches up once by default, or up to backfill", async () => {
    const db = await freshDatabase();
    const hf = new Holdfast({ connectionString: db.url, logger: silent });
    try {
      await hf.defineKind("compact");
      await hf.schedule("once", { cron: "* * * * *", kind: "compact", key: "a" });
      await hf.schedule("three", { cron: "* * * * *", kind: "compact", key: "b", backfill: 3 });
      // As if no worker had run for the last 10 minutes.
      await db.pool.query(
        "update holdfast.schedules set covered_until = now() - interval '10 minutes 30 seconds'",
      );
      const worker = hf.worker({ handlers: { other: async () => {} } });
      await worker.start();
      const counts = await until(async () => {
        const { rows } = await db.pool.query<{ key: string; n: number }>(
          "select key, count(*)::int as n from holdfast.tasks group by key order by key",
        );
        return rows.length === 2 && rows;
      }, 10_000);
      expect(counts).toEqual([
        { key: "a", n: 1 },
        { key: "b", n: 3 },
      ]);
      // The catch-ups are the latest ticks: minutes, the last one within the past minute.
      const { rows } = await db.pool.query<{ run_at: Date }>(
        "select run_at from holdfast.tasks where key = 'b' order by run_at",
      );
      const [t0 = 0, t1 = 0, t2 = 0] = rows.map((r) => r.run_at.getTime());
      expect([t0, t1, t2].every((x) => x % 60_000 === 0)).toBe(true);
      expect([t1 - t0, t2 - t1]).toEqual([60_000, 60_000]);
      expect(Date.now() - t2).toBeLessThan(60_000);
    } finally {
      await hf.close();
      await db.drop();
    }
  });
});

describe("three worker processes", () => {
  const t = useWorkerProcesses();

  it("enqueue each tick of a per-second schedule exactly once while the leader is SIGKILLed between ticks", async () => {
    const procs = await Promise.all(["a", "b", "c"].map((n) => t.start(n)));
    const hf = new Holdfast({ pool: t.db.pool, logger: silent });
    await hf.schedule("every-second", {
      cron: "* * * * * *",
      kind: "job",
      key: "ticks",
      payload: { ms: 0 }, // default backfill: a leader change loses no tick (catch-up window)
    });
    const ticks = async () =>
      // A tick's task is placed at its tick (place_at); run_at moves if the SIGKILLed leader
      // was running it (a lost attempt restarts at once).
      (
        await t.db.pool.query<{ run_at: Date; n: number }>(
          "select place_at as run_at, count(*)::int as n from holdfast.tasks where key = 'ticks' group by place_at order by place_at",
        )
      ).rows;

    const leader = await Promise.race(procs.map((p) => p.waitFor((e) => e.event === "leader")));
    await until(async () => (await ticks()).length >= 3, 10_000, "3 ticks");
    // Between ticks: just after one was enqueued.
    const before = (await ticks()).length;
    await until(async () => (await ticks()).length > before, 5_000, "a new tick");
    const victim = procs.find((p) => p.name === leader.worker);
    await victim?.kill("SIGKILL");
    const rest = procs.filter((p) => p !== victim);
    await Promise.race(rest.map((p) => p.waitFor((e) => e.event === "leader", 10_000)));
    const atTakeover = (await ticks()).length;
    await until(async () => (await ticks()).length >= atTakeover + 3, 10_000, "3 more ticks");
    await hf.unschedule("every-second");

    const rows = await ticks();
    expect(rows.filter((r) => r.n !== 1)).toEqual([]);
    // No tick lost either: consecutive seconds from the first to the last.
    const seconds = rows.map((r) => r.run_at.getTime() / 1000);
    const gaps = seconds.filter((s, i) => i > 0 && s !== (seconds[i - 1] ?? 0) + 1);
    if (gaps.length > 0) console.log("ticks (s):", seconds.join(" "));
    expect(seconds.every((s, i) => i === 0 || s === (seconds[i - 1] ?? 0) + 1)).toBe(true);
    expect(seconds.length).toBeGreaterThanOrEqual(6);
    const { rows: recorded } = await t.db.pool.query(
      "select count(*)::int as n from holdfast.tasks where key = 'ticks'",
    );
    expect(recorded[0].n).toBe(rows.length);
  });
});

describe("lateness", () => {
  it("each tick's lateness is recorded, and schedules(), inspect, the dashboard and a metric show it", async () => {
    const db = await freshDatabase();
    const hf = new Holdfast({ pool: db.pool, logger: silent });
    const metrics = hf.metrics();
    const worker = hf.worker({ name: "late", handlers: { tick: async () => {} } });
    try {
      await worker.start();
      await hf.schedule("every-second", { cron: "* * * * * *", kind: "tick", key: "t" });
      const fired = await new Promise<{ schedule: string; ticks: Date[]; lateMs: number[] }>(
        (resolve) => worker.once("schedule:fired", resolve),
      );
      expect(fired.schedule).toBe("every-second");
      expect(fired.lateMs.length).toBe(fired.ticks.length);
      expect(fired.lateMs.every((ms) => ms >= 0)).toBe(true);

      const [s] = await hf.schedules();
      expect(s?.lastTickAt).not.toBeNull();
      expect(s?.lastLateMs).toBeGreaterThanOrEqual(0);
      const { rows } = await db.pool.query<{ id: string }>(
        "select id from holdfast.tasks where key = 't' and place_at = $1",
        [s?.lastTickAt],
      );
      expect(s?.lastTaskId).toBe(Number(rows[0]?.id));

      const client = await db.pool.connect();
      const snap = await takeSnapshot(client).finally(() => client.release());
      expect(snap.schedules[0]?.lastLateMs).toBeGreaterThanOrEqual(0);
      expect(snap.schedules[0]?.lastTaskId).not.toBeNull();

      const text = await metrics.text();
      expect(text).toMatch(
        /holdfast_schedule_tick_lateness_seconds_count\{schedule="every-second"\} [1-9]/,
      );

      const dash = await startDashboard({ hf, port: 0, logger: silent });
      try {
        const html = await (await fetch(dash.url)).text();
        expect(html).toContain('data-schedule="every-second"');
      } finally {
        await dash.close();
      }
      await hf.unschedule("every-second");
    } finally {
      await worker.stop();
      await hf.close();
      await db.drop();
    }
  });
});
