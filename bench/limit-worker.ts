// One worker process of the limits bench (bench/limits.ts): kind "rate", whose runs sleep
// payload.ms. Env: DATABASE_URL, HF_CONCURRENCY. Prints "ready" once its worker started.
import pg from "pg";
import { pino } from "pino";
import { Holdfast, type Task } from "../src/index.js";

const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 4 });
pool.on("error", () => {});
const hf = new Holdfast({ pool, logger: pino({ level: "silent" }) });
const worker = hf.worker({
  concurrency: Number(process.env.HF_CONCURRENCY ?? 4),
  handlers: {
    rate: (task: Task<{ ms: number }>) =>
      new Promise<void>((resolve) => setTimeout(resolve, task.payload.ms)),
  },
});
await worker.start();
process.stdout.write("ready\n");
