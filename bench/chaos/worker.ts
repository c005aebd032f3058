// A chaos worker process. Handlers "short", "long" and "tick" sleep payload.ms (abortable) and write
// their start and end to chaos_log through the app pool, each write fenced with assert_fence.
// Events go to stdout as JSON lines. Env: DATABASE_URL, HF_NAME, HF_CONCURRENCY, HF_PRUNE_MS
// (pruneIntervalMs).
import pg from "pg";
import { pino } from "pino";
import { type HandlerContext, Holdfast, type Task } from "../../src/index.js";

const url = process.env.DATABASE_URL ?? "";
const name = process.env.HF_NAME ?? `w${process.pid}`;
const say = (event: string, data: Record<string, unknown> = {}) =>
  process.stdout.write(
    `${JSON.stringify({ event, worker: name, pid: process.pid, at: Date.now(), ...data })}\n`,
  );

// A query timeout: a handler whose connection went silent (a partitioned proxy) fails its
// write instead of waiting on it forever; the server ends that transaction on its side
// (assert_fence bounds it).
const pool = new pg.Pool({
  connectionString: url,
  max: 6,
  connectionTimeoutMillis: 5_000,
  query_timeout: 15_000,
});
pool.on("error", () => {});
const hf = new Holdfast({ pool, logger: pino({ level: process.env.HF_LOG ?? "silent" }) });

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      reject(signal.reason);
    });
  });
}

/** Runs `text` in a transaction that first asserts the task's fence (HF004 if stale). */
async function fenced(ctx: HandlerContext, text: string, values: unknown[]): Promise<void> {
  const client = await pool.connect();
  // A checked-out client has no pool error handler: a server restart between queries would
  // otherwise crash the process with an unhandled 'error' event.
  const ignore = () => {};
  client.on("error", ignore);
  try {
    await client.query("begin");
    await ctx.assertFence(client);
    await client.query(text, values);
    await client.query("commit");
    client.off("error", ignore);
    client.release();
  } catch (err) {
    await client.query("rollback").catch(() => {});
    client.off("error", ignore);
    client.release(true);
    throw err;
  }
}

async function run(task: Task<{ ms: number; fail?: boolean }>, ctx: HandlerContext): Promise<void> {
  say("start", { id: task.id, key: task.key, attempt: task.attempt, fence: task.fence });
  // Told to stop (lock lost, cancel, shutdown): from here on the run may not act. A write it
  // still has in flight is fenced, so the run's effects end here even if the call is stuck.
  ctx.signal.addEventListener("abort", () => say("abort", { id: task.id, fence: task.fence }), {
    once: true,
  });
  try {
    await fenced(
      ctx,
      `insert into chaos_log (task_id, key, attempt, fence, worker, started_at)
       values ($1, $2, $3, $4, $5, clock_timestamp())`,
      [task.id, task.key, task.attempt, task.fence, name],
    );
    await sleep(task.payload.ms, ctx.signal);
    await fenced(
      ctx,
      "update chaos_log set ended_at = clock_timestamp() where task_id = $1 and fence = $2",
      [task.id, task.fence],
    );
    if (task.payload.fail) throw new Error("asked to fail");
  } finally {
    // The moment this handler stopped running, whatever the outcome.
    say("exit", { id: task.id, fence: task.fence });
  }
}

const worker = hf.worker({
  name,
  concurrency: Number(process.env.HF_CONCURRENCY ?? 3),
  pruneIntervalMs: Number(process.env.HF_PRUNE_MS ?? 60_000),
  handlers: { short: run, long: run, tick: run },
});
worker.on("lock:lost", () => say("lock-lost"));
worker.on("lock:reconnected", () => say("lock-reconnected"));
worker.on("takeover", (t) => say("takeover", t));
await worker.start();
say("ready");
