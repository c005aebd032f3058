import { describe, expect, it } from "vitest";
import { Holdfast } from "../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";
import { useWorkerProcesses, type WorkerProcess } from "./support/processes.js";
import { until } from "./support/wait.js";

// Leader duties in every leader state (DESIGN guarantee 8). The sweep leader goes quiet while
// nothing runs; the deadline it advertises must cover every duty, or followers trust it past
// a duty that falls due and nobody performs it. Each test SIGKILLs the leader in one state and
// lets only the survivors go on: no replacement process, no enqueue to wake them.

interface Tick {
  tick: Date;
  n: number;
  late_ms: number;
}

const ticksOf = async (db: TestDatabase, name: string): Promise<Tick[]> =>
  (
    await db.pool.query<Tick>(
      `select t.place_at as tick, count(*)::int as n,
         max(extract(epoch from (st.enqueued_at - st.tick_at)) * 1000)::int as late_ms
       from holdfast.tasks t join holdfast.schedule_ticks st on st.task_id = t.id and st.name = $1
       group by t.place_at order by t.place_at`,
      [name],
    )
  ).rows;

/** Every tick once, and consecutive: `stepMs` apart from the first to the last. */
function expectEveryTickOnce(ticks: Tick[], stepMs: number): void {
  expect(ticks.filter((t) => t.n !== 1)).toEqual([]);
  const ms = ticks.map((t) => t.tick.getTime());
  const gaps = ms.flatMap((m, i) => (i > 0 && m - (ms[i - 1] ?? 0) !== stepMs ? [m] : []));
  expect(gaps.map((g) => new Date(g).toISOString())).toEqual([]);
}

async function leaderOf(procs: WorkerProcess[]): Promise<WorkerProcess> {
  const e = await Promise.race(procs.map((p) => p.waitFor((x) => x.event === "leader")));
  const leader = procs.find((p) => p.name === e.worker);
  if (!leader) throw new Error(`no process named ${e.worker}`);
  return leader;
}

describe("a sweep leader SIGKILLed while quiet", () => {
  const t = useWorkerProcesses();

  it("with only schedules: the survivors go on enqueuing every tick, once", async () => {
    const procs = await Promise.all(["a", "b", "c"].map((n) => t.start(n)));
    const hf = new Holdfast({ pool: t.db.pool, logger: silent });
    try {
      await hf.schedule("every-2s", {
        cron: "*/2 * * * * *",
        kind: "job",
        key: "ticks",
        payload: { ms: 0 },
      });
      const leader = await leaderOf(procs);
      await until(async () => (await ticksOf(t.db, "every-2s")).length >= 2, 15_000, "2 ticks");
      // Quiet between ticks, advertising the next tick as its deadline (a finite one: before,
      // the leader advertised 'infinity' and followers stopped watching).
      const since = Date.now();
      const quiet = await leader.waitFor(
        (e) => e.event === "quiet" && e.leader === true && e.at >= since,
        15_000,
      );
      expect(quiet.until).not.toBeNull();
      await leader.kill("SIGKILL");
      const killedAt = Date.now();
      const rest = procs.filter((p) => p !== leader);
      await until(
        async () =>
          (await ticksOf(t.db, "every-2s")).filter((x) => x.tick.getTime() > killedAt).length >= 3,
        20_000,
        "3 ticks after the kill",
      );
      const ticks = await ticksOf(t.db, "every-2s"); // read before unschedule drops the records
      await hf.unschedule("every-2s");
      expect(rest.some((p) => p.events.some((e) => e.event === "leader"))).toBe(true);
      const after = ticks.filter((x) => x.tick.getTime() > killedAt);
      console.log("lateness after the kill (ms):", after.map((x) => x.late_ms).join(" "));
      expect(after.length).toBeGreaterThanOrEqual(3);
      expectEveryTickOnce(ticks, 2000);
    } finally {
      await hf.close();
    }
  });
});

describe("a sweep leader SIGKILLed while quiet with nothing to do", () => {
  const t = useWorkerProcesses();

  it("a schedule declared after the kill is led and ticked by a survivor", async () => {
    const procs = await Promise.all(["d", "e"].map((n) => t.start(n)));
    const leader = await leaderOf(procs);
    await leader.waitFor((e) => e.event === "quiet" && e.leader === true, 15_000);
    await leader.kill("SIGKILL");
    const survivor = procs.find((p) => p !== leader);
    const hf = new Holdfast({ pool: t.db.pool, logger: silent });
    try {
      await hf.schedule("every-second", {
        cron: "* * * * * *",
        kind: "job",
        key: "ticks",
        payload: { ms: 0 },
      });
      await until(async () => (await ticksOf(t.db, "every-second")).length >= 3, 15_000, "3 ticks");
      const ticks = await ticksOf(t.db, "every-second");
      await hf.unschedule("every-second");
      expect(survivor?.events.some((e) => e.event === "leader")).toBe(true);
      expect(ticks.length).toBeGreaterThanOrEqual(3);
      expectEveryTickOnce(ticks, 1000);
    } finally {
      await hf.close();
    }
  });
});

describe("holdfast.quiet_until()", () => {
  it("is never later than a schedule's next tick, and not quiet while a tick is overdue", async () => {
    const db = await freshDatabase();
    try {
      const hf = new Holdfast({ pool: db.pool, logger: silent });
      await hf.defineKind("job");
      const quietUntil = async () =>
        (await db.pool.query<{ at: Date | null }>("select holdfast.quiet_until() as at")).rows[0]
          ?.at;
      await hf.enqueue("job", { key: "later", runAt: new Date(Date.now() + 3_600_000) });
      await hf.schedule("nightly", { cron: "0 3 * * *", kind: "job", key: "n" });
      const next = new Date(Date.now() + 60_000);
      // What the leader stores when it has read the schedule (or fired its last tick).
      await db.pool.query(
        "select holdfast.fire_schedule('nightly', 1, '{}', covered_until, $1) from holdfast.schedules",
        [next],
      );
      expect((await quietUntil())?.getTime()).toBe(next.getTime());
      await db.pool.query("update holdfast.schedules set next_at = now() - interval '1 second'");
      expect(await quietUntil()).toBeNull();
    } finally {
      await db.drop();
    }
  });
});
