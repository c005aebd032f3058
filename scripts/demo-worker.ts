// One deriver process of the demo: runs "dream" tasks, a batch of "model calls" after another,
// each batch recorded in dream_batches and checkpointed in the same transaction (unless
// HF_CHECKPOINTS=0: then every attempt starts from the first batch). Each run's start and end
// (with its fence) go to dream_runs; it reports what it does as JSON lines on stdout.
import pg from "pg";
import { pino } from "pino";
import { Holdfast, type Task } from "../src/index.js";

const name = process.env.HF_NAME ?? `worker-${process.pid}`;
const useCheckpoints = process.env.HF_CHECKPOINTS !== "0";
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 2 });
const hf = new Holdfast({ pool, logger: pino({ level: "silent" }) });
const say = (event: string, data: Record<string, unknown> = {}) =>
  process.stdout.write(`${JSON.stringify({ event, worker: name, at: Date.now(), ...data })}\n`);

interface Dream {
  batches: number;
  batchMs: number;
}
interface Checkpoint {
  next: number;
  progress: number;
  note: string;
}

/** Runs `work` in a transaction that commits only while this run holds its key. */
async function fenced(
  ctx: { assertFence(c: pg.PoolClient): Promise<void> },
  work: (c: pg.PoolClient) => Promise<void>,
) {
  const client = await pool.connect();
  try {
    await client.query("begin");
    await ctx.assertFence(client); // only the current holder may write its results
    await work(client);
    await client.query("commit");
  } catch (err) {
    await client.query("rollback").catch(() => {});
    throw err;
  } finally {
    client.release();
  }
}

const worker = hf.worker({
  name,
  concurrency: 1,
  handlers: {
    dream: async (task: Task<Dream, Checkpoint>, ctx) => {
      const from = useCheckpoints ? (task.checkpoint?.next ?? 0) : 0;
      say("start", { id: task.id, key: task.key, attempt: task.attempt, fence: task.fence, from });
      await pool.query(
        "insert into dream_runs (task_id, key, worker, attempt, fence) values ($1, $2, $3, $4, $5)",
        [task.id, task.key, name, task.attempt, task.fence],
      );
      const { batches, batchMs } = task.payload;
      for (let batch = from; batch < batches; batch++) {
        // The "LLM consolidation" of one batch: the expensive part, never done twice.
        await new Promise((resolve) => setTimeout(resolve, batchMs));
        await fenced(ctx, async (c) => {
          await c.query(
            "insert into dream_batches (task_id, key, batch, worker, attempt) values ($1, $2, $3, $4, $5)",
            [task.id, task.key, batch, name, task.attempt],
          );
          if (useCheckpoints) {
            const progress = (batch + 1) / batches;
            const note = `batch ${batch + 1} of ${batches}`;
            await ctx.checkpoint({ next: batch + 1, progress, note }, { client: c });
          }
        });
      }
      await fenced(ctx, async (c) => {
        await c.query(
          "update dream_runs set ended_at = clock_timestamp() where task_id = $1 and fence = $2",
          [task.id, task.fence],
        );
      });
      say("end", { id: task.id, key: task.key, attempt: task.attempt });
    },
  },
});
await worker.start();
say("ready");
