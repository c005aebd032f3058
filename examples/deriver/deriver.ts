// A small deriver on holdfast: "representation" tasks turn a session's new messages into
// observations, in order, several messages per batch; "dream" tasks consolidate one peer's
// observations, at most one waiting per peer and at least `dreamInterval` apart. Both write
// to their own tables inside a transaction guarded by the run's fence.
import type pg from "pg";
import type { Holdfast, Interval, Task, Worker } from "../../src/index.js";

export interface Message {
  workspace: string;
  session: string;
  observer: string;
  observed: string;
  messageId: number;
  text: string;
}

type DreamPayload = Pick<Message, "workspace" | "observer" | "observed">;

export const representationKey = (m: Message) =>
  `representation:${m.workspace}:${m.session}:${m.observed}`;
export const dreamKey = (d: DreamPayload) => `dream:${d.workspace}:${d.observer}:${d.observed}`;

/** Creates the deriver's own tables and its two kinds (idempotent). */
export async function setupDeriver(hf: Holdfast, opts: { dreamInterval: Interval }): Promise<void> {
  await hf.pool.query(`
    create table if not exists deriver_observations (
      id bigserial primary key, workspace text, session text, observed text,
      message_id int, text text, fence bigint,
      unique (workspace, session, observed, message_id));
    create table if not exists deriver_dreams (
      id bigserial primary key, key text, observations int, fence bigint,
      started_at timestamptz, finished_at timestamptz default clock_timestamp())`);
  // Strict order (the default): a failed batch of messages is retried before the session's
  // later messages are derived, so message N+1 never lands before message N.
  await hf.defineKind("representation", { batch: { max: 10 } });
  // A dream consolidates whatever the peer has when it runs, so a retry need not hold up the
  // next one: later dreams of the peer may pass a dream waiting out its backoff.
  await hf.defineKind("dream", {
    minInterval: opts.dreamInterval,
    maxAttempts: 3,
    strictOrder: false,
  });
}

/** What the API does when a message arrives: one representation task, one dream request. */
export async function onMessage(hf: Holdfast, m: Message): Promise<void> {
  await hf.enqueue("representation", { key: representationKey(m), payload: m });
  const dream: DreamPayload = {
    workspace: m.workspace,
    observer: m.observer,
    observed: m.observed,
  };
  // Deduped: a peer has at most one dream waiting; one requested during a dream runs after it.
  await hf.enqueue("dream", { key: dreamKey(dream), dedupeKey: dreamKey(dream), payload: dream });
}

/** Runs `work` in a transaction that commits only while this run still holds its key. */
async function fenced(
  pool: pg.Pool,
  ctx: { assertFence(c: pg.PoolClient): Promise<void> },
  work: (c: pg.PoolClient) => Promise<void>,
): Promise<void> {
  const c = await pool.connect();
  try {
    await c.query("begin");
    await ctx.assertFence(c);
    await work(c);
    await c.query("commit");
  } catch (err) {
    await c.query("rollback");
    throw err;
  } finally {
    c.release();
  }
}

export function deriverWorker(
  hf: Holdfast,
  opts: {
    name?: string;
    concurrency?: number;
    dreamInterval: Interval;
    /** Simulated model time per representation batch and per dream. */
    representationMs?: number;
    dreamMs?: number;
  },
): Worker {
  return hf.worker({
    ...(opts.name ? { name: opts.name } : {}),
    concurrency: opts.concurrency ?? 3,
    handlers: {
      representation: {
        batch: { max: 10 },
        // Up to 10 messages of one session, in order: one model call, one fenced write.
        handleBatch: async (tasks: Task<Message>[], ctx) => {
          await sleep(opts.representationMs ?? 100, ctx.signal); // the model call
          await fenced(hf.pool, ctx, async (c) => {
            for (const { payload: m, fence } of tasks) {
              await c.query(
                `insert into deriver_observations (workspace, session, observed, message_id, text, fence)
                 values ($1, $2, $3, $4, $5, $6) on conflict do nothing`,
                [m.workspace, m.session, m.observed, m.messageId, `observed: ${m.text}`, fence],
              );
            }
          });
        },
      },
      dream: {
        minInterval: opts.dreamInterval,
        maxAttempts: 3,
        // The long LLM pass; stops at once if the lock is lost or the dream is cancelled.
        handler: async (task: Task<DreamPayload>, ctx) => {
          const startedAt = new Date();
          await sleep(opts.dreamMs ?? 200, ctx.signal);
          await fenced(hf.pool, ctx, async (c) => {
            const { rows } = await c.query(
              "select count(*)::int as n from deriver_observations where workspace = $1 and observed = $2",
              [task.payload.workspace, task.payload.observed],
            );
            await c.query(
              "insert into deriver_dreams (key, observations, fence, started_at) values ($1, $2, $3, $4)",
              [task.key, rows[0].n, task.fence, startedAt],
            );
          });
        },
      },
    },
  });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      reject(signal.reason);
    });
  });
}
