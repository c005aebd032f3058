// A small deriver on holdfast: "representation" tasks turn a session's new messages into
// observations, in order, several messages per batch; "dream" tasks consolidate one peer's
// observations: debounced after the peer's latest activity (bounded by a maximum wait), at
// least `dreamInterval` apart per peer, and at most `maxDreams` at once across all workers. A
// recurring "maintenance" task runs on a cron schedule, once per tick cluster-wide. All write
// to their own tables inside a transaction guarded by the run's fence. A dream consolidates
// its observations batch by batch and checkpoints after each batch in the same transaction:
// taken over after a crash, it continues with the next batch, and nothing is written twice.
// Dreams draw on the LLM provider's tokens-per-minute limit, shared by every worker process: a
// dream starts only when the window has room for its reservation, and each model call charges
// the tokens it really used (docs/limits.md).
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

/** A dream's checkpoint: where it is in the observations it consolidates. */
export interface DreamCheckpoint {
  /** The last observation id it consolidates (the peer's latest when the dream first ran). */
  upTo: number;
  total: number;
  /** Consolidated so far: every observation with id <= afterId, in `batches` batches. */
  afterId: number;
  done: number;
  batches: number;
  progress: number;
  note: string;
}

export const representationKey = (m: Message) =>
  `representation:${m.workspace}:${m.session}:${m.observed}`;
export const dreamKey = (d: DreamPayload) => `dream:${d.workspace}:${d.observer}:${d.observed}`;

export interface DeriverSettings {
  /** Per peer: a dream starts no sooner than this after the last one ended ("8 hours"). */
  dreamInterval: Interval;
  /** Dreams running at once across every worker process (LLM token budget). */
  maxDreams: number;
  /** A dream starts this long after the peer's latest activity ("10 minutes")… */
  dreamDebounce: Interval;
  /** …but no later than this after the first request it gathers ("2 hours"). */
  dreamMaxWait: Interval;
  /** When maintenance runs (cron, UTC), e.g. "0 3 * * *". */
  maintenanceCron: string;
  /** The provider's tokens per minute for the account (default 200,000)… */
  tokensPerMinute?: number;
  /** …and what a dream reserves before its first call tells what it costs (default 20,000). */
  dreamTokenReserve?: number;
}

/** The provider's token limit that dreams draw on. */
export const tokenLimit = "llm-tokens";

/** Creates the deriver's own tables, kinds and schedule (idempotent: every process may call it). */
export async function setupDeriver(hf: Holdfast, opts: DeriverSettings): Promise<void> {
  await hf.pool.query(`
    create table if not exists deriver_observations (
      id bigserial primary key, workspace text, session text, observed text,
      message_id int, text text, fence bigint,
      unique (workspace, session, observed, message_id));
    create table if not exists deriver_consolidated (
      dream_task bigint, observation_id bigint, batch int, fence bigint,
      at timestamptz default clock_timestamp());
    create table if not exists deriver_dreams (
      id bigserial primary key, key text, observations int, fence bigint,
      started_at timestamptz, finished_at timestamptz default clock_timestamp());
    create table if not exists deriver_maintenance (
      id bigserial primary key, tick timestamptz, fence bigint,
      ran_at timestamptz default clock_timestamp())`);
  // Strict order (the default): a failed batch of messages is retried before the session's
  // later messages are derived, so message N+1 never lands before message N.
  await hf.defineKind("representation", { batch: { max: 10 } });
  // A dream consolidates whatever the peer has when it runs, so a retry need not hold up the
  // next one: later dreams of the peer may pass a dream waiting out its backoff.
  await hf.defineLimit(tokenLimit, { units: opts.tokensPerMinute ?? 200_000, per: "1 minute" });
  await hf.defineKind("dream", {
    minInterval: opts.dreamInterval,
    maxAttempts: 3,
    strictOrder: false,
    maxRunning: opts.maxDreams,
    limits: { [tokenLimit]: opts.dreamTokenReserve ?? 20_000 },
  });
  await hf.defineKind("maintenance");
  await hf.schedule("nightly-maintenance", {
    cron: opts.maintenanceCron,
    kind: "maintenance",
    key: "maintenance",
  });
}

/** What the API does when a message arrives: one representation task, one dream request. */
export async function onMessage(
  hf: Holdfast,
  m: Message,
  opts: Pick<DeriverSettings, "dreamDebounce" | "dreamMaxWait">,
): Promise<void> {
  await hf.enqueue("representation", { key: representationKey(m), payload: m });
  const dream: DreamPayload = {
    workspace: m.workspace,
    observer: m.observer,
    observed: m.observed,
  };
  // Deduped and debounced: a peer has at most one dream waiting, starting dreamDebounce after
  // the peer's latest message (never later than dreamMaxWait after the first); one requested
  // during a dream runs after it. Durable: no timer in this process.
  await hf.enqueue("dream", {
    key: dreamKey(dream),
    dedupeKey: dreamKey(dream),
    payload: dream,
    debounce: opts.dreamDebounce,
    maxWait: opts.dreamMaxWait,
  });
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
    /** Simulated model time per representation batch and per dream batch. */
    representationMs?: number;
    dreamMs?: number;
    /** Observations a dream consolidates per model call (default 10). */
    dreamBatch?: number;
    /** stop(): how long running handlers get before their signal aborts (default 30 s). */
    shutdownTimeoutMs?: number;
  },
): Worker {
  return hf.worker({
    ...(opts.name ? { name: opts.name } : {}),
    concurrency: opts.concurrency ?? 3,
    ...(opts.shutdownTimeoutMs === undefined ? {} : { shutdownTimeoutMs: opts.shutdownTimeoutMs }),
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
      // Kind settings (interval, cap) are setupDeriver's: a worker keeps what is stored.
      dream: {
        // The long LLM pass, one model call per batch of observations; stops at once if the
        // lock is lost or the dream is cancelled. Each batch's writes and the checkpoint that
        // says it is done commit together: a new attempt (after a crash, a lost lock, a
        // shutdown hand-over) resumes with the next batch and writes nothing twice.
        handler: async (task: Task<DreamPayload, DreamCheckpoint>, ctx) => {
          const startedAt = new Date();
          const { workspace, observed } = task.payload;
          let cp = task.checkpoint ?? (await firstCheckpoint(hf.pool, workspace, observed));
          const size = opts.dreamBatch ?? 10;
          let calls = 0;
          for (;;) {
            const { rows } = await hf.pool.query<{ id: string }>(
              `select id from deriver_observations where workspace = $1 and observed = $2
               and id > $3 and id <= $4 order by id limit $5`,
              [workspace, observed, cp.afterId, cp.upTo, size],
            );
            if (rows.length === 0) break;
            await sleep(opts.dreamMs ?? 50, ctx.signal); // the model call for this batch
            const ids = rows.map((r) => Number(r.id));
            // What the call really used (a provider reports it as usage.total_tokens): the
            // charges of a dream add up and replace its reservation. A 429 would be
            // `throw new ThrottledError(tokenLimit, retryAfterMs)`: the limit closes for every
            // worker and the dream goes back in line without spending an attempt.
            await ctx.charge(tokenLimit, modelTokens(ids.length));
            calls++;
            const done = cp.done + ids.length;
            const next: DreamCheckpoint = {
              ...cp,
              afterId: ids.at(-1) ?? cp.afterId,
              done,
              batches: cp.batches + 1,
              progress: cp.total === 0 ? 1 : Math.min(1, done / cp.total),
              note: `batch ${cp.batches + 1}: ${done} of ${cp.total} observations`,
            };
            await fenced(hf.pool, ctx, async (c) => {
              await c.query(
                `insert into deriver_consolidated (dream_task, observation_id, batch, fence)
                 select $1, unnest($2::bigint[]), $3, $4`,
                [task.id, ids, next.batches, task.fence],
              );
              await ctx.checkpoint(next, { client: c });
            });
            cp = next;
          }
          // Nothing to consolidate: no call was made, so the reservation goes back in full.
          if (calls === 0) await ctx.charge(tokenLimit, 0);
          await fenced(hf.pool, ctx, async (c) => {
            await c.query(
              "insert into deriver_dreams (key, observations, fence, started_at) values ($1, $2, $3, $4)",
              [task.key, cp.done, task.fence, startedAt],
            );
          });
        },
      },
      // One run per tick of the schedule, whichever worker leads.
      maintenance: async (task: Task, ctx) => {
        await fenced(hf.pool, ctx, async (c) => {
          await c.query("insert into deriver_maintenance (tick, fence) values ($1, $2)", [
            task.runAt,
            task.fence,
          ]);
        });
      },
    },
  });
}

/** The simulated model's token usage for one call over `n` observations. */
export const modelTokens = (n: number) => 400 + 120 * n;

/** A dream's first attempt: it consolidates the peer's observations up to the latest now. */
async function firstCheckpoint(
  pool: pg.Pool,
  workspace: string,
  observed: string,
): Promise<DreamCheckpoint> {
  const { rows } = await pool.query<{ up_to: string | null; n: number }>(
    "select max(id) as up_to, count(*)::int as n from deriver_observations where workspace = $1 and observed = $2",
    [workspace, observed],
  );
  const total = rows[0]?.n ?? 0;
  const upTo = Number(rows[0]?.up_to ?? 0);
  return { upTo, total, afterId: 0, done: 0, batches: 0, progress: 0, note: "starting" };
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
