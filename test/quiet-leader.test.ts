import { once } from "node:events";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Holdfast } from "../src/index.js";
import { LockSession } from "../src/worker/lock-session.js";
import { Sweeper } from "../src/worker/sweeper.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";
import { useWorkerProcesses, type WorkerProcess } from "./support/processes.js";
import { startProxy } from "./support/tcp-proxy.js";
import { sleep } from "./support/wait.js";

// Issue 14: an idle worker process should cost at most one transaction a second. The sweep
// leader was the whole cost (a sweep every 250 ms); now it stops sweeping while nothing can be
// found ("quiet": no task running, no head due), and wakes on any NOTIFY holdfast or when the
// earliest delayed head becomes due. These tests pin the cost and the takeovers that quiet
// must not lose.

describe("holdfast.quiet_until()", () => {
  let db: TestDatabase;
  let hf: Holdfast;
  beforeAll(async () => {
    db = await freshDatabase();
    hf = new Holdfast({ pool: db.pool, logger: silent });
    await hf.defineKind("job");
    await hf.defineKind("later");
  });
  afterAll(async () => {
    await hf.close();
    await db.drop();
  });
  const quietUntil = async () =>
    (await db.pool.query<{ at: Date | null }>("select holdfast.quiet_until() as at")).rows[0]?.at;
  const infinity = async () =>
    (await db.pool.query<{ inf: boolean }>("select holdfast.quiet_until() = 'infinity' as inf"))
      .rows[0]?.inf;

  it("is infinity when nothing is queued, the earliest delayed head otherwise, and null while a head is due or a task runs", async () => {
    expect(await infinity()).toBe(true);
    const soon = new Date(Date.now() + 60_000);
    await hf.enqueue("later", { key: "a", runAt: new Date(Date.now() + 3_600_000) });
    await hf.enqueue("job", { key: "b", runAt: soon });
    expect((await quietUntil())?.getTime()).toBe(soon.getTime());

    const { id } = await hf.enqueue("job", { key: "c" });
    expect(await quietUntil()).toBeNull(); // due now

    const holder = await db.pool.connect();
    try {
      const { rows } = await holder.query<{ id: string; fence: string }>(
        "select id, fence from holdfast.claim(array['job'], 'test')",
      );
      expect(rows.map((r) => Number(r.id))).toEqual([id]);
      expect(await quietUntil()).toBeNull(); // running
      await holder.query("select holdfast.complete($1, $2)", [rows[0]?.id, rows[0]?.fence]);
    } finally {
      holder.release();
    }
    expect((await quietUntil())?.getTime()).toBe(soon.getTime());
  });

  it("a cancel that leaves a due task at the head of its key notifies (nothing else would end the leader's quiet)", async () => {
    const listener = await db.pool.connect();
    try {
      await listener.query("listen holdfast");
      const a = await hf.enqueue("job", { key: "k", runAt: new Date(Date.now() + 3_600_000) });
      // b is queued behind a (strict order: a kept its place when its attempt failed)
      await hf.enqueue("job", { key: "k" });
      await db.pool.query(
        "update holdfast.tasks set place_at = now() - interval '1 hour' where id = $1",
        [a.id],
      );
      await db.pool.query("select holdfast._refresh_key('k')");
      const wake = once(listener, "notification");
      await hf.cancel(a.id);
      const [n] = (await wake) as [{ channel: string; payload: string }];
      expect(n).toMatchObject({ channel: "holdfast", payload: "job" });
      expect(await quietUntil()).toBeNull();
    } finally {
      listener.release();
    }
  });
});

// A sweep's snapshot can predate a commit whose NOTIFY reaches a worker first: the sweep then
// says "quiet" about a task it did not see. These pin the rules that keep such an answer from
// putting anyone to sleep (src/worker/sweeper.ts), on real lock sessions.
describe("Sweeper quiet rules", () => {
  let db: TestDatabase;
  const sessions: LockSession[] = [];
  beforeAll(async () => {
    db = await freshDatabase();
  });
  afterAll(async () => {
    await Promise.all(sessions.map((s) => s.close()));
    await db.drop();
  });
  const open = async () => {
    const s = new LockSession({ connectionString: db.url }, "holdfast:lock:test");
    await s.connect();
    sessions.push(s);
    return s;
  };
  const sweeper = () => {
    const events = { due: 0, quiet: [] as Array<{ until: number; leader: boolean }> };
    let dueNow: (() => void) | undefined;
    const sw = new Sweeper(
      silent,
      { lateMs: 500, maxQuietMs: 30_000 },
      {
        due: () => {
          events.due++;
          dueNow?.();
        },
        quiet: (until, leader) => events.quiet.push({ until, leader }),
        elected: () => {},
      },
    );
    const nextDue = () => new Promise<void>((resolve) => (dueNow = resolve));
    return { sw, events, nextDue };
  };

  it("the leader goes quiet after two quiet sweeps sent after the last wake, and a wake ends quiet at once", async () => {
    const leader = sweeper();
    const session = await open();
    expect((await leader.sw.tick(session)).elected).toBe(true);
    // A wake while the statement runs: its answer may not have seen what the wake announced.
    const inFlight = leader.sw.tick(session);
    leader.sw.wake();
    await inFlight;
    await leader.sw.tick(session);
    expect(leader.sw.isQuiet).toBe(false); // one quiet sweep since the wake
    await leader.sw.tick(session);
    expect(leader.sw.isQuiet).toBe(true);
    expect(leader.events.quiet).toEqual([{ until: Number.POSITIVE_INFINITY, leader: true }]);
    const due = leader.events.due;
    leader.sw.wake();
    expect(leader.sw.isQuiet).toBe(false);
    expect(leader.events.due).toBe(due + 1); // sweep now
    leader.sw.clear();
  });

  it("a follower trusts a quiet heartbeat only after a second one since the last wake", async () => {
    const follower = sweeper();
    const session = await open(); // the leader above still holds leadership on its session
    expect((await follower.sw.tick(session)).elected).toBe(false);
    // try_lead failed and quiet_until() is infinity: no heartbeat is expected.
    expect(follower.events.quiet).toEqual([{ until: Number.POSITIVE_INFINITY, leader: false }]);
    const due = follower.nextDue();
    follower.sw.wake(); // an enqueue: a heartbeat is expected within lateMs again
    follower.sw.heartbeat("infinity"); // may come from a sweep that did not see the enqueue
    expect(follower.events.quiet).toHaveLength(1); // not trusted
    await due; // and the leader it was waiting for never sent another: try to lead
    // The second since the wake: that sweep began after the first one committed, which was
    // after the wake's commit (NOTIFYs arrive in commit order), so it saw what the wake announced.
    follower.sw.heartbeat("infinity");
    expect(follower.events.quiet).toEqual([
      { until: Number.POSITIVE_INFINITY, leader: false },
      { until: Number.POSITIVE_INFINITY, leader: false },
    ]);
    follower.sw.clear();
  });
});

it("an idle worker process runs at most one transaction a second (the sweep leader goes quiet)", async () => {
  const db = await freshDatabase();
  const proxy = await startProxy(db.url); // counts what the worker sends
  const hf = new Holdfast({ connectionString: proxy.url, logger: silent });
  const worker = hf.worker({ name: "idle", handlers: { job: async () => {} } });
  try {
    const leader = once(worker, "leader");
    await worker.start();
    await leader;
    // A rate needs a window: this one is the measurement, not a wait for some state.
    const before = proxy.transactions();
    const t0 = Date.now();
    await sleep(6_000);
    const perSecond = (proxy.transactions() - before) / ((Date.now() - t0) / 1000);
    console.log(`idle worker process: ${perSecond.toFixed(2)} transactions/s`);
    expect(perSecond).toBeLessThanOrEqual(1); // was 4 (a sweep every 250 ms)
  } finally {
    await worker.stop();
    await hf.close();
    await proxy.close();
    await db.drop();
  }
});

/** Resolves when the worker emitted `quiet` (past or future) as the leader or as a follower. */
const quiet = (p: WorkerProcess, leader: boolean) =>
  p.waitFor((e) => e.event === "quiet" && e.leader === leader, 20_000);

describe("a quiet sweep leader SIGKILLed", () => {
  const t = useWorkerProcesses();

  it("is replaced once a task is enqueued: a follower leads, and the task whose holder is SIGKILLed restarts as attempt 2", async () => {
    // The leader runs another kind: it is woken by a NOTIFY of any kind, not only its own.
    const leader = await t.start("leader", { HF_KIND: "other" });
    await leader.waitFor((e) => e.event === "leader");
    await quiet(leader, true);
    const followers = [await t.start("f1"), await t.start("f2"), await t.start("f3")];
    await Promise.all(followers.map((f) => quiet(f, false)));
    await leader.kill("SIGKILL");

    // No heartbeat was expected, so none is missed: the followers learn of the dead leader
    // only from the enqueue's NOTIFY, after which a heartbeat is due within 2 sweep intervals.
    const hf = new Holdfast({ pool: t.db.pool, logger: silent });
    const enqueuedAt = Date.now();
    const { id } = await hf.enqueue("job", { key: "dream:quiet", payload: { ms: 60_000 } });
    const first = await Promise.race(
      followers.map((p) => p.waitFor((e) => e.event === "start" && e.id === id)),
    );
    const holder = followers.find((p) => p.name === first.worker) as WorkerProcess;
    await holder.kill("SIGKILL");
    const survivors = followers.filter((p) => p !== holder);
    const second = await Promise.race(
      survivors.map((p) =>
        p.waitFor((e) => e.event === "start" && e.id === id && e.attempt === 2, 10_000),
      ),
    );
    expect(survivors.map((p) => p.name)).toContain(second.worker);
    // Attempt 2 started after a sweep requeued it, so some follower had been elected. Lines of
    // different processes reach this process in no set order (a busy machine delays one pipe
    // behind another): wait for that follower's line instead of reading what has arrived.
    await Promise.race(followers.map((p) => p.waitFor((e) => e.event === "leader", 10_000)));
    const elections = followers.flatMap((p) => p.events.filter((e) => e.event === "leader"));
    expect(elections.length).toBeGreaterThan(0);
    // Quiet followers did not try to lead before there was work.
    for (const e of elections) expect(e.at).toBeGreaterThanOrEqual(enqueuedAt);
  });
});

describe("a delayed task while the sweep leader is quiet", () => {
  const t = useWorkerProcesses();

  it("is swept when its holder is SIGKILLed: the leader woke at quiet_until by itself", async () => {
    const leader = await t.start("leader", { HF_KIND: "other" });
    await leader.waitFor((e) => e.event === "leader");
    const followers = [await t.start("f1"), await t.start("f2")];
    await Promise.all(followers.map((f) => quiet(f, false)));
    await quiet(leader, true);
    const hf = new Holdfast({ pool: t.db.pool, logger: silent });
    const runAt = new Date(Date.now() + 1_500);
    const seen = leader.events.length;
    const { id } = await hf.enqueue("job", {
      key: "dream:delayed",
      payload: { ms: 60_000 },
      runAt,
    });
    // Woken by the enqueue, the leader sweeps and goes quiet again until the task is due.
    const spell = await leader.waitFor(
      (e) => e.event === "quiet" && leader.events.indexOf(e) >= seen,
    );
    expect(Math.abs(Number(spell.until) - runAt.getTime())).toBeLessThan(100);

    const first = await Promise.race(
      followers.map((p) => p.waitFor((e) => e.event === "start" && e.id === id)),
    );
    expect(first.at).toBeGreaterThanOrEqual(runAt.getTime());
    const holder = followers.find((p) => p.name === first.worker) as WorkerProcess;
    await holder.kill("SIGKILL");
    const survivor = followers.find((p) => p !== holder) as WorkerProcess;
    await survivor.waitFor((e) => e.event === "start" && e.id === id && e.attempt === 2, 10_000);
    // The leader itself requeued it: it was awake, not replaced.
    expect(leader.events.some((e) => e.event === "takeover")).toBe(true);
    expect(survivor.events.some((e) => e.event === "leader")).toBe(false);
  });
});
