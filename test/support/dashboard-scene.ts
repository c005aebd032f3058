// A database as an operator finds it mid-incident, built with the SQL API alone (no worker
// process, so nothing sweeps the orphan away): a running dream held by a live session, tasks
// waiting, an orphaned dream, dead letters, and an hour of finished attempts for the charts.
import pg from "pg";
import type { Holdfast } from "../../src/index.js";

export const scene = {
  running: "dream:omni:ws:alice:alice",
  orphaned: "dream:omni:ws:bob:bob",
  dead: "dream:omni:ws:carol:carol",
  deadError: "LLM provider returned 429: quota exceeded for this workspace",
  hostileKey: '<script>alert("key")</script>',
  hostileError: "<img src=x onerror=alert(1)> broke",
  worker: "deriver-1",
  backoff: "representation:ws:session-7:erin",
};

export interface Scene {
  runningId: number;
  followUpId: number;
  orphanId: number;
  deadId: number;
  hostileId: number;
  /** A task waiting out a retry's backoff, and one of its key waiting behind it. */
  backoffId: number;
  behindId: number;
  /** Representation attempts this scene ended, by outcome (all within the last hour). */
  representation: { succeeded: number; failed: number };
  /** The session holding the running dream's lock; end it after the test. */
  holder: pg.Client;
}

interface Claimed {
  id: string;
  fence: string;
}

async function session(url: string, name: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url, application_name: `holdfast:lock:${name}` });
  c.on("error", () => {});
  await c.connect();
  return c;
}

async function claim(c: pg.Client, kind: string, worker: string): Promise<Claimed> {
  const { rows } = await c.query<Claimed>(
    "select id::text, fence::text from holdfast.claim(array[$1], $2, 1)",
    [kind, worker],
  );
  const row = rows[0];
  if (!row) throw new Error(`scene: nothing to claim for ${kind}`);
  return row;
}

/** Runs a task to its end through the SQL API: fails it with `error`, or completes it. */
async function finish(c: pg.Client, t: Claimed, error?: string): Promise<void> {
  if (error === undefined) await c.query("select holdfast.complete($1, $2)", [t.id, t.fence]);
  else
    await c.query("select holdfast.fail($1, $2, $3, '0 seconds', $4)", [
      t.id,
      t.fence,
      error,
      `Error: ${error}\n    at dream (deriver/dream.ts:88:11)\n    at run (deriver/worker.ts:41:5)`,
    ]);
}

export async function buildScene(hf: Holdfast, url: string): Promise<Scene> {
  await hf.defineKind("dream", { maxAttempts: 3 });
  await hf.defineKind("representation");
  const worker = await session(url, "deriver-2");

  // An hour of history: a few representation tasks a minute, some failing once (then retried).
  let succeeded = 0;
  let failed = 0;
  for (let m = 58; m >= 1; m -= 1) {
    const n = 1 + ((m * 7) % 5);
    await worker.query(
      `select holdfast.enqueue('representation', format('representation:ws:session-%s:alice', g),
         jsonb_build_object('message', g)) from generate_series(1, $1::int) g`,
      [n],
    );
    const { rows } = await worker.query<Claimed>(
      "select id::text, fence::text from holdfast.claim(array['representation'], 'deriver-2', $1)",
      [n],
    );
    const failing = m % 13 === 0 ? rows.slice(0, 1) : [];
    for (const t of failing) await finish(worker, t, "embedding service timed out");
    const rest = rows.slice(failing.length);
    await worker.query("select holdfast.complete_many($1::bigint[], $2::bigint[])", [
      rest.map((t) => t.id),
      rest.map((t) => t.fence),
    ]);
    // Place the attempts in the past, as if they had run then, for 0.4 to 3 s each.
    await worker.query(
      `update holdfast.attempts set
         started_at = now() - $2 * interval '1 minute',
         finished_at = now() - $2 * interval '1 minute' + (400 + task_id * 977 % 2600) * interval '1 ms'
       where task_id = any($1::bigint[])`,
      [rows.map((t) => t.id), m],
    );
    for (const _ of failing)
      await finish(worker, await claim(worker, "representation", "deriver-2"));
    succeeded += rows.length;
    failed += failing.length;
  }
  // Finished dreams of other peers, for the dream chart's run times.
  for (const [i, peer] of ["dave", "erin", "frank"].entries()) {
    const { id } = await hf.enqueue("dream", { key: `dream:omni:ws:${peer}:${peer}` });
    await finish(worker, await claim(worker, "dream", "deriver-2"));
    await hf.pool.query(
      `update holdfast.attempts set started_at = now() - $2 * interval '1 minute',
         finished_at = now() - $2 * interval '1 minute' + $3 * interval '1 second' where task_id = $1`,
      [id, 50 - i * 15, 600 + i * 240],
    );
  }

  // The dead letter: every attempt failed.
  const dead = await hf.enqueue("dream", {
    key: scene.dead,
    payload: { ws: "ws", observer: "carol", observed: "carol" },
    maxAttempts: 2,
  });
  for (let i = 0; i < 2; i++)
    await finish(worker, await claim(worker, "dream", "deriver-2"), scene.deadError);
  // A dead letter whose key, payload and error are markup: it must show as text.
  const hostile = await hf.enqueue("representation", {
    key: scene.hostileKey,
    payload: { note: "</pre><script>alert('payload')</script>" },
    maxAttempts: 1,
  });
  await finish(worker, await claim(worker, "representation", "deriver-2"), scene.hostileError);

  // The orphan: its holder session is terminated mid-run and no worker sweeps.
  const orphanSession = await session(url, "deriver-3");
  const orphan = await hf.enqueue("dream", { key: scene.orphaned, payload: { observer: "bob" } });
  await claim(orphanSession, "dream", "deriver-3");
  const pid = (await orphanSession.query("select pg_backend_pid() as pid")).rows[0].pid;
  await hf.pool.query("select pg_terminate_backend($1)", [pid]);
  await orphanSession.end().catch(() => {});
  for (let i = 0; i < 200; i++) {
    const { rows } = await hf.pool.query("select 1 from pg_stat_activity where pid = $1", [pid]);
    if (rows.length === 0) break;
    await new Promise((r) => setTimeout(r, 10));
  }

  // The running dream, held by a live session, and a follow-up waiting behind it.
  const holder = await session(url, scene.worker);
  const running = await hf.enqueue("dream", {
    key: scene.running,
    payload: { ws: "ws", observer: "alice", observed: "alice", since: "2026-11-01" },
  });
  await claim(holder, "dream", scene.worker);
  const followUp = await hf.enqueue("dream", {
    key: scene.running,
    payload: { observer: "alice" },
  });
  // A representation waiting out its retry's backoff keeps its place: the next one waits behind it.
  const backoff = await hf.enqueue("representation", {
    key: scene.backoff,
    payload: { message: 1 },
  });
  const first = await claim(worker, "representation", "deriver-2");
  await worker.query("select holdfast.fail($1, $2, 'vector store unavailable', '10 minutes')", [
    first.id,
    first.fence,
  ]);
  const behind = await hf.enqueue("representation", {
    key: scene.backoff,
    payload: { message: 2 },
  });
  // Ready work nobody has taken yet.
  await hf.enqueue("representation", { key: "representation:ws:session-42:bob", payload: {} });
  await worker.end();
  return {
    representation: { succeeded, failed: failed + 2 },
    runningId: running.id,
    backoffId: backoff.id,
    behindId: behind.id,
    followUpId: followUp.id,
    orphanId: orphan.id,
    deadId: dead.id,
    hostileId: hostile.id,
    holder,
  };
}
