import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Holdfast, InvalidArgumentError, TaskNotFoundError } from "../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";
import { sleep, until } from "./support/wait.js";

let db: TestDatabase;
let hf: Holdfast;
const session = () => db.session();

beforeAll(async () => {
  db = await freshDatabase();
  hf = new Holdfast({ connectionString: db.url, logger: silent });
});

afterAll(async () => {
  await hf.close();
  await db.drop();
});

/** Claims the next task of `kind` on `c` (a lock session) and returns its id and fence. */
async function claim(
  c: pg.Client,
  kind: string,
): Promise<{ id: string; fence: string; key: string }> {
  const { rows } = await c.query("select id, fence, key from holdfast.claim(array[$1], 'w')", [
    kind,
  ]);
  if (!rows[0]) throw new Error(`nothing of ${kind} to claim`);
  return rows[0];
}

/** Runs one task of `kind` on `key` to the end: succeeded, failed (a dead letter) or cancelled. */
async function finished(kind: string, key: string, end: "succeeded" | "failed" | "cancelled") {
  const c = await session();
  const { rows } = await c.query("select holdfast.enqueue($1, $2, max_attempts => 1) as id", [
    kind,
    key,
  ]);
  const id: string = rows[0].id;
  if (end === "cancelled") {
    await c.query("select holdfast.cancel($1)", [id]);
  } else {
    const t = await claim(c, kind);
    expect(t.id).toBe(id);
    if (end === "succeeded") await c.query("select holdfast.complete($1, $2)", [id, t.fence]);
    else await c.query("select holdfast.fail($1, $2, 'boom')", [id, t.fence]);
  }
  return id;
}

async function prune(maxRows = 1000): Promise<number> {
  const { rows } = await db.pool.query("select holdfast.prune($1) as n", [maxRows]);
  return rows[0].n;
}

async function pruneAll(): Promise<void> {
  while ((await prune()) > 0) {}
}

async function taskIds(kind: string): Promise<string[]> {
  const { rows } = await db.pool.query(
    "select id from holdfast.tasks where kind = $1 order by id",
    [kind],
  );
  return rows.map((r) => r.id);
}

async function exists(table: "keys" | "attempts", where: string, arg: unknown): Promise<boolean> {
  const { rows } = await db.pool.query(
    `select exists (select 1 from holdfast.${table} where ${where} = $1) as e`,
    [arg],
  );
  return rows[0].e;
}

/** Moves finished tasks' end back in time: as if `ago` had passed since they ended. */
async function age(kind: string, ago: string): Promise<void> {
  await db.pool.query(
    "update holdfast.tasks set finished_at = finished_at - $2::interval where kind = $1 and finished_at is not null",
    [kind, ago],
  );
}

describe("retention settings", () => {
  it("a new kind, and every kind of an upgraded database, has the default retention", async () => {
    await hf.defineKind("plain");
    const { rows } = await db.pool.query(
      "select retain_succeeded::text as s, retain_cancelled::text as c, retain_failed::text as f from holdfast.kinds where kind = 'plain'",
    );
    expect(rows[0]).toEqual({ s: "1 day", c: "7 days", f: "30 days" });
  });

  it("defineKind sets each state's retention, null keeps forever, a missing one is kept", async () => {
    await hf.defineKind("ret", { retention: { succeeded: 60_000, failed: null } });
    await hf.defineKind("ret", { retention: { cancelled: "2 hours" } });
    await hf.defineKind("ret", { maxAttempts: 3 });
    const { rows } = await db.pool.query(
      "select retain_succeeded::text as s, retain_cancelled::text as c, retain_failed as f from holdfast.kinds where kind = 'ret'",
    );
    expect(rows[0]).toEqual({ s: "00:01:00", c: "02:00:00", f: null });
  });

  it("refuses a bad retention before writing", async () => {
    for (const retention of [
      { succeeded: -1 },
      { failed: "" },
      { dead: 1 },
      { cancelled: Number.NaN },
    ] as never[]) {
      await expect(hf.defineKind("bad_ret", { retention })).rejects.toBeInstanceOf(
        InvalidArgumentError,
      );
    }
    await expect(
      hf.defineKind("bad_ret", { retention: { succeeded: "-1 day" } }),
    ).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(
      db.pool.query(
        "select holdfast.define_kind('bad_ret', retain_failed => '1 day', keep_forever => '{failed}')",
      ),
    ).rejects.toMatchObject({ code: "HF002" });
  });
});

describe("prune", () => {
  it("deletes finished tasks past their kind's retention for their end state, with their attempts", async () => {
    await hf.defineKind("pa", { retention: { succeeded: 1, cancelled: "1 hour", failed: null } });
    await hf.defineKind("pb"); // defaults: 1 day, 7 days, 30 days
    const aOk = await finished("pa", "pa:1", "succeeded");
    const aCancelled = await finished("pa", "pa:2", "cancelled");
    const aDead = await finished("pa", "pa:3", "failed");
    const bOk = await finished("pb", "pb:1", "succeeded");
    const bDead = await finished("pb", "pb:2", "failed");
    // Work that has not ended is never pruned, whatever its age.
    const { rows: p } = await db.pool.query("select holdfast.enqueue('pa', 'pa:1') as id");
    const pending: string = p[0].id;
    expect(await exists("attempts", "task_id", aOk)).toBe(true);

    await pruneAll();
    expect(await taskIds("pa")).toEqual([aCancelled, aDead, pending]);
    expect(await exists("attempts", "task_id", aOk)).toBe(false);
    expect(await exists("keys", "key", "pa:1")).toBe(true); // its pending task needs it
    expect(await taskIds("pb")).toEqual([bOk, bDead]);

    await age("pa", "2 hours");
    await age("pb", "2 days");
    await pruneAll();
    expect(await taskIds("pa")).toEqual([aDead, pending]); // dead letters of pa: kept forever
    expect(await exists("keys", "key", "pa:2")).toBe(false);
    expect(await exists("keys", "key", "pa:3")).toBe(true);
    expect(await taskIds("pb")).toEqual([bDead]);
    expect((await hf.deadLetters({ kind: "pb" })).map((d) => String(d.id))).toEqual([bDead]);

    await age("pb", "29 days");
    await pruneAll();
    expect(await taskIds("pb")).toEqual([]);
    expect(await exists("attempts", "task_id", bDead)).toBe(false);
    expect(await exists("keys", "key", "pb:2")).toBe(false);
    expect(await taskIds("pa")).toEqual([aDead, pending]);
  });

  it("a retry of a pruned dead letter says there is no such task", async () => {
    await hf.defineKind("pgone", { retention: { failed: 0 } });
    const id = await finished("pgone", "pgone:k", "failed");
    await pruneAll();
    await expect(hf.retry(Number(id))).rejects.toBeInstanceOf(TaskNotFoundError);
  });

  it("does one bounded batch per call", async () => {
    await hf.defineKind("pbatch", { retention: { succeeded: 1 } });
    for (let i = 0; i < 5; i++) await finished("pbatch", `pbatch:${i}`, "succeeded");
    const n = await prune(2); // 2 tasks, their 2 attempts, their 2 keys
    expect(n).toBe(6);
    expect(await taskIds("pbatch")).toHaveLength(3);
    await pruneAll();
    expect(await taskIds("pbatch")).toHaveLength(0);
  });

  it("keeps fences monotonic across a pruned and recreated key: a zombie's old fence is refused", async () => {
    await hf.defineKind("fz", { retention: { succeeded: 1 } });
    const zombie = await session();
    await zombie.query("select holdfast.enqueue('fz', 'fz:k')");
    const z = await claim(zombie, "fz");
    // The zombie's session ends (a partition): the sweep gives its task to another session.
    const { rows: pid } = await zombie.query("select pg_backend_pid() as pid");
    const admin = await session();
    await admin.query("select pg_terminate_backend($1)", [pid[0].pid]);
    await until(async () => (await admin.query("select holdfast.sweep() as n")).rows[0].n === 1);
    const b = await session();
    const t2 = await claim(b, "fz");
    expect(t2.id).toBe(z.id);
    await b.query("select holdfast.complete($1, $2)", [t2.id, t2.fence]);

    await pruneAll();
    expect(await exists("keys", "key", "fz:k")).toBe(false);
    await admin.query("select holdfast.enqueue('fz', 'fz:k')");
    const t3 = await claim(b, "fz");
    expect(BigInt(t3.fence)).toBeGreaterThan(BigInt(t2.fence));
    expect(BigInt(t2.fence)).toBeGreaterThan(BigInt(z.fence));
    // The zombie, still running its handler, writes through the app's pool: refused.
    await expect(
      admin.query("select holdfast.assert_fence('fz:k', $1)", [z.fence]),
    ).rejects.toMatchObject({ code: "HF004" });
    await expect(
      admin.query("select holdfast.complete($1, $2)", [z.id, z.fence]),
    ).rejects.toMatchObject({ code: "HF003" });
    await admin.query("select holdfast.assert_fence('fz:k', $1)", [t3.fence]);
    await b.query("select holdfast.complete($1, $2)", [t3.id, t3.fence]);
  });

  it("keeps fences monotonic across a pruned key whose fences ran ahead of the clock", async () => {
    // Fences track the clock; a key claimed while the server's clock was an hour ahead (a
    // failover, a clock step back) holds fences the clock will not reach for an hour.
    await hf.defineKind("fc", { retention: { succeeded: 1 } });
    const c = await session();
    await c.query("select holdfast.enqueue('fc', 'fc:k')");
    await c.query(
      "update holdfast.keys set fence = holdfast._next_fence(0) + 3600000::bigint * 1024 where key = 'fc:k'",
    );
    const old = await claim(c, "fc");
    await c.query("select holdfast.complete($1, $2)", [old.id, old.fence]);
    await pruneAll();
    expect(await exists("keys", "key", "fc:k")).toBe(false);
    await c.query("select holdfast.enqueue('fc', 'fc:k')");
    const next = await claim(c, "fc");
    expect(BigInt(next.fence)).toBeGreaterThan(BigInt(old.fence));
    await expect(
      c.query("select holdfast.assert_fence('fc:k', $1)", [old.fence]),
    ).rejects.toMatchObject({ code: "HF004" });
    await c.query("select holdfast.complete($1, $2)", [next.id, next.fence]);
  });

  it("keeps a key's minimum interval after its last success was pruned", async () => {
    const intervalMs = 2_000;
    await hf.defineKind("mi", { minInterval: intervalMs, retention: { succeeded: 1 } });
    const c = await session();
    await finished("mi", "mi:k", "succeeded");
    await pruneAll();
    expect(await taskIds("mi")).toEqual([]);
    // The interval still runs: the key and when it last succeeded are kept.
    expect(await exists("keys", "key", "mi:k")).toBe(true);
    const { rows: due } = await c.query(
      "select extract(epoch from holdfast.prune_due() - now()) * 1000 as ms",
    );
    expect(Number(due[0].ms)).toBeGreaterThan(0);
    expect(Number(due[0].ms)).toBeLessThanOrEqual(intervalMs);

    await c.query("select holdfast.enqueue('mi', 'mi:k')");
    const { rows: none } = await c.query("select id from holdfast.claim(array['mi'], 'w')");
    expect(none).toEqual([]); // still inside the interval
    const started = Date.now();
    const t = await until(async () => {
      const { rows } = await c.query("select id, fence from holdfast.claim(array['mi'], 'w')");
      return rows[0] as { id: string; fence: string } | undefined;
    });
    expect(Date.now() - started).toBeGreaterThan(intervalMs / 2);
    await c.query("select holdfast.complete($1, $2)", [t.id, t.fence]);

    // Once the interval has passed, the key leaves with its last task.
    await sleep(intervalMs + 100);
    await pruneAll();
    expect(await exists("keys", "key", "mi:k")).toBe(false);
    const { rows: kk } = await db.pool.query(
      "select count(*)::int as n from holdfast.key_kinds where key = 'mi:k'",
    );
    expect(kk[0].n).toBe(0);
  });

  it("never waits for a lock an enqueue holds, and the enqueued task keeps its key", async () => {
    await hf.defineKind("pe", { retention: { succeeded: 1 } });
    const old = await finished("pe", "pe:k", "succeeded");
    const producer = await session();
    await producer.query("begin");
    await producer.query("select holdfast.enqueue('pe', 'pe:k')");
    const pruner = await session();
    await pruner.query("set lock_timeout = '200ms'");
    // The key row is held: its last finished task waits for a later batch with the row.
    await pruner.query("select * from holdfast.prune_rows(1000)"); // no lock_timeout error
    expect(await taskIds("pe")).toContain(old);
    await producer.query("commit");
    await pruner.query("select * from holdfast.prune_rows(1000)");
    expect(await taskIds("pe")).not.toContain(old);
    expect(await exists("keys", "key", "pe:k")).toBe(true);
    const t = await claim(producer, "pe");
    await producer.query("select holdfast.complete($1, $2)", [t.id, t.fence]);
  });

  it("a key held during a batch keeps its last task for a later batch, and leaves with it", async () => {
    await hf.defineKind("ph", { retention: { succeeded: 1, cancelled: 0 } });
    await finished("ph", "ph:k", "succeeded");
    await finished("ph", "ph:k", "cancelled");
    // A handler's fenced write (assert_fence's row lock) on the key while a batch runs.
    const writer = await session();
    await writer.query("begin");
    await writer.query("select 1 from holdfast.keys where key = 'ph:k' for key share");
    await pruneAll();
    expect(await taskIds("ph")).toHaveLength(2);
    await writer.query("commit");
    await pruneAll();
    expect(await taskIds("ph")).toHaveLength(0);
    expect(await exists("keys", "key", "ph:k")).toBe(false);
  });

  it("an enqueue whose key row is deleted between its insert and its lock creates it again", async () => {
    await hf.defineKind("pr", { retention: { succeeded: 1 } });
    await finished("pr", "pr:k", "succeeded");
    await db.pool.query("delete from holdfast.tasks where kind = 'pr'");
    // A prune batch at the moment it holds the key row (as prune_rows does before its delete).
    const pruner = await session();
    await pruner.query("begin");
    await pruner.query("select 1 from holdfast.keys where key = 'pr:k' for update");
    const producer = await session();
    const enqueued = producer.query("select holdfast.enqueue('pr', 'pr:k') as id");
    // The enqueue found the row (its insert did nothing) and now waits for the row lock.
    await until(async () => {
      const { rows } = await db.pool.query(
        "select count(*)::int as n from pg_stat_activity where wait_event_type = 'Lock' and query like '%holdfast.enqueue(''pr''%'",
      );
      return rows[0].n === 1;
    });
    await pruner.query("delete from holdfast.keys where key = 'pr:k'");
    await pruner.query("commit");
    const { rows } = await enqueued;
    const { rows: t } = await db.pool.query("select state, key from holdfast.tasks where id = $1", [
      rows[0].id,
    ]);
    expect(t[0]).toEqual({ state: "pending", key: "pr:k" });
    const c = await session();
    const claimed = await claim(c, "pr");
    expect(claimed.id).toBe(rows[0].id);
    await c.query("select holdfast.complete($1, $2)", [claimed.id, claimed.fence]);
  });

  it("enqueues, claims and completions racing prunes of the same keys lose nothing", async () => {
    await hf.defineKind("prace", { retention: { succeeded: 1 } });
    const stopAt = Date.now() + 3_000;
    const keys = ["prace:a", "prace:b", "prace:c"];
    let pruned = 0;
    const pruning = (async () => {
      while (Date.now() < stopAt) pruned += await prune(50);
    })();
    const enqueued: string[] = [];
    const completed: string[] = [];
    const runOne = async (c: pg.Client) => {
      const { rows: t } = await c.query(
        "select id, fence from holdfast.claim(array['prace'], 'w')",
      );
      if (!t[0]) return false;
      await c.query("select holdfast.complete($1, $2)", [t[0].id, t[0].fence]);
      completed.push(t[0].id);
      return true;
    };
    const producers = [0, 1, 2].map(async (i) => {
      const c = await session();
      for (let n = 0; Date.now() < stopAt; n++) {
        const key = keys[(i + n) % keys.length] as string;
        const { rows } = await c.query("select holdfast.enqueue('prace', $1) as id", [key]);
        enqueued.push(rows[0].id);
        await runOne(c);
      }
    });
    await Promise.all([pruning, ...producers]);
    const c = await session();
    while (await runOne(c)) {}
    expect(pruned).toBeGreaterThan(0);
    expect(enqueued.length).toBeGreaterThan(10);
    // Every task enqueued ran exactly once.
    expect([...completed].sort()).toEqual([...enqueued].sort());
    await pruneAll();
    const { rows: left } = await db.pool.query(
      "select (select count(*)::int from holdfast.tasks where kind = 'prace') as tasks, (select count(*)::int from holdfast.keys where key like 'prace:%') as keys",
    );
    expect(left[0]).toEqual({ tasks: 0, keys: 0 });
  });
});

describe("a succeeded retention of 0: the task leaves at completion", () => {
  it("deletes the task with no attempt row, and the pruner takes its emptied key row with the fence floor", async () => {
    await hf.defineKind("instant", { retention: { succeeded: 0 } });
    const c = await session();
    await c.query("select holdfast.enqueue('instant', 'inst:1')");
    const first = await claim(c, "instant");
    await c.query("select holdfast.complete($1, $2)", [first.id, first.fence]);
    const { rows: gone } = await db.pool.query(
      `select (select count(*)::int from holdfast.tasks where id = $1) as tasks,
              (select count(*)::int from holdfast.attempts where task_id = $1) as attempts,
              (select emptied_at is not null from holdfast.keys where key = 'inst:1') as emptied`,
      [first.id],
    );
    expect(gone[0]).toEqual({ tasks: 0, attempts: 0, emptied: true });
    // The next batch takes the key row (found through keys_emptied, no task to prune).
    expect(await prune()).toBeGreaterThan(0);
    const { rows: keyLeft } = await db.pool.query(
      "select count(*)::int as n from holdfast.keys where key = 'inst:1'",
    );
    expect(keyLeft[0].n).toBe(0);
    // The key again: a higher fence, and the first run's fence is refused.
    await c.query("select holdfast.enqueue('instant', 'inst:1')");
    const second = await claim(c, "instant");
    expect(BigInt(second.fence)).toBeGreaterThan(BigInt(first.fence));
    await expect(
      db.pool.query("select holdfast.assert_fence('inst:1', $1)", [first.fence]),
    ).rejects.toMatchObject({ code: "HF004" });
    await c.query("select holdfast.complete($1, $2)", [second.id, second.fence]);
  });

  it("a key with another task queued is not marked empty, and its next task runs", async () => {
    await hf.defineKind("instant2", { retention: { succeeded: 0 } });
    const c = await session();
    await c.query("select holdfast.enqueue('instant2', 'inst:2')");
    await c.query("select holdfast.enqueue('instant2', 'inst:2')");
    const a = await claim(c, "instant2");
    await c.query("select holdfast.complete($1, $2)", [a.id, a.fence]);
    const { rows } = await db.pool.query(
      "select emptied_at is null as kept from holdfast.keys where key = 'inst:2'",
    );
    expect(rows[0].kept).toBe(true);
    const b = await claim(c, "instant2");
    expect(BigInt(b.id)).toBeGreaterThan(BigInt(a.id));
    await c.query("select holdfast.complete($1, $2)", [b.id, b.fence]);
    // Emptied now; an enqueue before the batch clears the mark and the pruner keeps the key.
    await c.query("select holdfast.enqueue('instant2', 'inst:2')");
    await pruneAll();
    const { rows: after } = await db.pool.query(
      "select emptied_at is null as kept, head_id is not null as headed from holdfast.keys where key = 'inst:2'",
    );
    expect(after[0]).toEqual({ kept: true, headed: true });
  });
});
