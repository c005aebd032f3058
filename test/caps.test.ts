import pg from "pg";
import { describe, expect, it } from "vitest";
import { Holdfast, InvalidArgumentError } from "../src/index.js";
import { silent, useHoldfast } from "./support/db.js";
import { useWorkerProcesses, type WorkerProcess } from "./support/processes.js";
import type { RunRow } from "./support/runs.js";
import { until } from "./support/wait.js";

/** The most runs open at one instant; a run without an end is open until `openUntil`. */
function peakConcurrency(runs: RunRow[], openUntil: (r: RunRow) => number): number {
  const edges = runs.flatMap((r) => [
    { at: r.started_at.getTime(), d: 1 },
    { at: r.ended_at ? r.ended_at.getTime() : openUntil(r), d: -1 },
  ]);
  // At equal times an end comes first: a run that ends as another starts is not an overlap.
  edges.sort((a, b) => a.at - b.at || a.d - b.d);
  let open = 0;
  let peak = 0;
  for (const e of edges) {
    open += e.d;
    peak = Math.max(peak, open);
  }
  return peak;
}

describe("worker processes", () => {
  const t = useWorkerProcesses();

  it("maxRunning 2 is never exceeded by 4 processes x concurrency 3 while holders are SIGKILLed", async () => {
    const hf = new Holdfast({ pool: t.db.pool, logger: silent });
    await hf.defineKind("job", { maxRunning: 2 });
    const procs: WorkerProcess[] = await Promise.all(
      ["a", "b", "c", "d"].map((n) => t.start(n, { HF_CONCURRENCY: "3" })),
    );
    // 15 s of work at 2 at once: runs are still going after a replacement's slow start.
    const n = 30;
    for (let i = 0; i < n; i++) await hf.enqueue("job", { key: `k${i}`, payload: { ms: 1_000 } });

    // Kill two processes while they run a task; start replacements.
    const killedAt = new Map<string, number>();
    for (const round of [1, 2]) {
      const live = procs.filter((p) => !killedAt.has(p.name));
      const running = (p: WorkerProcess) =>
        p.events.some(
          (e) => e.event === "start" && !p.events.some((x) => x.event === "end" && x.id === e.id),
        );
      const victim = await until(() => live.find(running), 20_000, "a process running a task");
      killedAt.set(victim.name, Date.now());
      await victim.kill("SIGKILL");
      procs.push(await t.start(`r${round}`, { HF_CONCURRENCY: "3" }));
    }
    await until(
      async () =>
        (
          await t.db.pool.query(
            "select count(*)::int as n from holdfast.tasks where state = 'succeeded'",
          )
        ).rows[0].n === n,
      60_000,
      "every task done",
    );
    const { rows: runs } = await t.db.pool.query<RunRow>("select * from runs");
    const peak = peakConcurrency(runs, (r) => killedAt.get(r.worker) ?? Date.now());
    console.log(`peak concurrent runs with maxRunning 2: ${peak} (${runs.length} runs)`);
    expect(peak).toBe(2);
  }, 120_000); // six process starts: slow on a loaded machine
});

describe("two worker processes", () => {
  const t = useWorkerProcesses();

  it("a SIGKILLed holder's slot is taken by a waiting task within 1 s", async () => {
    const hf = new Holdfast({ pool: t.db.pool, logger: silent });
    await hf.defineKind("job", { maxRunning: 1 });
    const a = await t.start("slot-a");
    const b = await t.start("slot-b");
    const first = await hf.enqueue("job", { key: "slot:1", payload: { ms: 60_000 } });
    const holderStart = await Promise.race(
      [a, b].map((p) => p.waitFor((e) => e.event === "start" && e.id === first.id)),
    );
    const second = await hf.enqueue("job", { key: "slot:2", payload: { ms: 60_000 } });
    const holder = holderStart.worker === a.name ? a : b;
    const other = holder === a ? b : a;
    // The cap holds: the second task waits while the first runs (its key is free).
    await until(
      async () =>
        (await t.db.pool.query("select holdfast.next_run_at(array['job']) as at")).rows[0].at ===
        null,
      5_000,
      "the full kind out of next_run_at",
    );
    expect(other.events.some((e) => e.event === "start")).toBe(false);
    const killedAt = Date.now();
    await holder.kill("SIGKILL");
    const next = await other.waitFor(
      (e) => e.event === "start" && (e.id === second.id || e.id === first.id),
      5_000,
    );
    console.log(`slot reused ${next.at - killedAt} ms after SIGKILL`);
    expect(next.at - killedAt).toBeLessThan(1_000);
  });
});

describe("from SQL", () => {
  const t = useHoldfast({ capped: { maxRunning: 1 }, free: {} });

  it("a session claims a capped kind only while a slot is free; the slot frees with the session", async () => {
    const { db, hf } = t;
    await hf.enqueue("capped", { key: "c1" });
    await hf.enqueue("capped", { key: "c2" });
    await hf.enqueue("free", { key: "f1" });
    const s1 = new pg.Client({ connectionString: db.url });
    const s2 = new pg.Client({ connectionString: db.url });
    await s1.connect();
    await s2.connect();
    try {
      const claim = async (c: pg.Client, kinds: string[], n = 5) =>
        (
          await c.query<{ key: string }>(
            "select key from holdfast.claim($1::text[], 'w', $2) order by key",
            [kinds, n],
          )
        ).rows.map((r) => r.key);
      expect(await claim(s1, ["capped"])).toEqual(["c1"]); // one slot: one key of two
      expect(await claim(s1, ["capped"])).toEqual([]); // the same session does not take it twice
      expect(await claim(s2, ["capped", "free"])).toEqual(["f1"]); // other kinds unaffected
      expect(
        (await db.pool.query("select holdfast.next_run_at(array['capped']) as at")).rows[0].at,
      ).toBeNull();
      const { rows: slots } = await db.pool.query(
        `select count(*)::int as n from pg_locks where locktype = 'advisory' and objsubid = 2
           and granted and database = (select oid from pg_database where datname = current_database())`,
      );
      expect(slots[0].n).toBe(1);
      await s1.end(); // the holder's session ends: its slot (and key) with it
      await db.pool.query("select holdfast.sweep()");
      expect(await claim(s2, ["capped"])).toHaveLength(1); // the slot is free again
    } finally {
      await s1.end().catch(() => {});
      await s2.end();
    }
  });

  it("completion frees the slot and raising the cap makes room", async () => {
    const { db, hf } = t;
    const c = new pg.Client({ connectionString: db.url });
    await c.connect();
    try {
      await hf.enqueue("capped", { key: "d1" });
      await hf.enqueue("capped", { key: "d2" });
      await hf.enqueue("capped", { key: "d3" });
      await c.query("select holdfast.sweep()"); // the previous test's orphan: pending again
      await c.query("select holdfast.define_kind('capped', max_running => 2)");
      const got = (
        await c.query<{ id: string; fence: string; key: string }>(
          "select id, fence, key from holdfast.claim(array['capped'], 'w', 10)",
        )
      ).rows;
      expect(got).toHaveLength(2);
      expect(
        (await c.query("select * from holdfast.claim(array['capped'], 'w', 10)")).rows,
      ).toEqual([]);
      await c.query("select holdfast.complete($1, $2)", [got[0]?.id, got[0]?.fence]);
      expect(
        (await c.query("select * from holdfast.claim(array['capped'], 'w', 10)")).rows,
      ).toHaveLength(1);
      await c.query("select holdfast.define_kind('capped', max_running => 0)"); // no cap
      const { rows } = await db.pool.query(
        "select max_running from holdfast.kinds where kind = 'capped'",
      );
      expect(rows[0].max_running).toBeNull();
    } finally {
      await c.end();
    }
  });

  it("rejects a cap that is not a positive integer", async () => {
    await expect(t.hf.defineKind("capped", { maxRunning: 0 })).rejects.toBeInstanceOf(
      InvalidArgumentError,
    );
  });
});

describe("a worker waiting for a full kind", () => {
  const t = useHoldfast({ solo: { maxRunning: 1 } });

  it("sleeps without a timer and starts when a completion frees the slot (NOTIFY, no poll)", async () => {
    const { db, hf } = t;
    // A plain SQL session holds the kind's one slot.
    const holder = new pg.Client({ connectionString: db.url });
    await holder.connect();
    await hf.enqueue("solo", { key: "solo:1" });
    const { rows } = await holder.query<{ id: string; fence: string }>(
      "select id, fence from holdfast.claim(array['solo'], 'holder')",
    );
    expect(rows).toHaveLength(1);
    const started: number[] = [];
    const worker = hf.worker({
      name: "waiter",
      rescanIntervalMs: 600_000, // only a NOTIFY can wake it within the test
      handlers: { solo: async (task) => void started.push(task.id) },
    });
    const idle: Array<Date | null> = [];
    worker.on("idle", ({ nextRunAt }) => idle.push(nextRunAt));
    await worker.start();
    try {
      await until(() => idle.length > 0, 10_000, "the first scan");
      const second = await hf.enqueue("solo", { key: "solo:2" });
      // Woken by the enqueue, the worker finds the kind full and sleeps with no timer.
      await until(() => idle.length > 1, 10_000, "a claim after the enqueue");
      expect(idle.every((at) => at === null)).toBe(true);
      expect(started).toEqual([]);
      await holder.query("select holdfast.complete($1, $2)", [rows[0]?.id, rows[0]?.fence]);
      await until(() => started.includes(second.id), 5_000, "the waiting task started");
    } finally {
      await holder.end();
      await worker.stop();
    }
  });
});
