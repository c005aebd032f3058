// One deriver process of the demo: runs "dream" tasks, writing each run's start and end
// (with its fence) to dream_runs, and reports what it does as JSON lines on stdout.
import pg from "pg";
import { pino } from "pino";
import { Holdfast, type Task } from "../src/index.js";

const name = process.env.HF_NAME ?? `worker-${process.pid}`;
const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 2 });
const hf = new Holdfast({ pool, logger: pino({ level: "silent" }) });
const say = (event: string, data: Record<string, unknown> = {}) =>
  process.stdout.write(`${JSON.stringify({ event, worker: name, at: Date.now(), ...data })}\n`);

const worker = hf.worker({
  name,
  concurrency: 1,
  handlers: {
    dream: async (task: Task<{ seconds: number }>, ctx) => {
      say("start", { id: task.id, key: task.key, attempt: task.attempt, fence: task.fence });
      await pool.query(
        "insert into dream_runs (task_id, key, worker, attempt, fence) values ($1, $2, $3, $4, $5)",
        [task.id, task.key, name, task.attempt, task.fence],
      );
      // The "LLM consolidation pass": long, and longer than any stale-claim timeout would be.
      await new Promise((resolve) => setTimeout(resolve, task.payload.seconds * 1000));
      const client = await pool.connect();
      try {
        await client.query("begin");
        await ctx.assertFence(client); // only the current holder may write its results
        await client.query(
          "update dream_runs set ended_at = clock_timestamp() where task_id = $1 and fence = $2",
          [task.id, task.fence],
        );
        await client.query("commit");
      } finally {
        client.release();
      }
      say("end", { id: task.id, key: task.key, attempt: task.attempt });
    },
  },
});
await worker.start();
say("ready");
