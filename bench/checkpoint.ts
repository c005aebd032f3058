// The cost of ctx.checkpoint: `npx tsx bench/checkpoint.ts [samples]` alone, or the
// `checkpoint` section of bench/run.ts (`npm run bench -- --only checkpoint`).
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { pino } from "pino";
import { type HandlerContext, Holdfast } from "../src/index.js";
import { createDatabase, dropDatabase, startBenchServer } from "./db.js";
import { fmt, type Summary, summarize, table } from "./stats.js";

export interface CheckpointCostResult extends Summary {
  variant: string;
}

/**
 * Times ctx.checkpoint inside a running handler (the SQL checks fence and holder and writes
 * the task row), each variant in turn call by call so a changing load falls on all of them:
 * - a small state (the deriver's: ~150 bytes) through the app's pool: its own commit (with
 *   fsync on, a WAL flush);
 * - the same inside the handler's open transaction ({ client }): the statement alone, its
 *   commit shared with the handler's writes;
 * - a 64 KiB state through the pool;
 * - `select 1` through the pool, the round trip floor beside them.
 */
export async function checkpointCost(
  adminUrl: string,
  samples: number,
): Promise<CheckpointCostResult[]> {
  const url = await createDatabase(adminUrl, "checkpoint");
  const hf = new Holdfast({ connectionString: url, logger: pino({ level: "silent" }) });
  await hf.migrate();
  const warmup = 20;
  const names = [
    "pool, 150 B",
    "{ client } in the handler's transaction, 150 B",
    "pool, 64 KiB",
    "select 1 (round trip floor)",
  ];
  const times: number[][] = names.map(() => []);
  const small = (i: number) => ({
    upTo: 123_456,
    total: 400,
    afterId: 1_000 + i,
    done: i % 400,
    batches: i,
    progress: (i % 400) / 400,
    note: `batch ${i}: ${i % 400} of 400 observations`,
  });
  const big = { blob: "x".repeat(64 * 1024) };
  const timed = async (fn: () => Promise<unknown>) => {
    const t0 = performance.now();
    await fn();
    return performance.now() - t0;
  };
  const run = async (ctx: HandlerContext) => {
    const client = await hf.pool.connect();
    try {
      for (let i = 0; i < samples + warmup; i++) {
        const t = [
          await timed(() => ctx.checkpoint(small(i))),
          await (async () => {
            await client.query("begin");
            const ms = await timed(() => ctx.checkpoint(small(i), { client }));
            await client.query("commit");
            return ms;
          })(),
          await timed(() => ctx.checkpoint(big)),
          await timed(() => hf.pool.query("select 1")),
        ];
        if (i >= warmup) for (const [j, ms] of t.entries()) times[j]?.push(ms);
      }
    } finally {
      client.release();
    }
  };
  let failure: unknown;
  const worker = hf.worker({
    handlers: {
      bench: async (_task, ctx) => {
        await run(ctx).catch((err: unknown) => {
          failure = err;
        });
      },
    },
  });
  try {
    await worker.start();
    const ended = new Promise<void>((resolve) => worker.once("task:end", () => resolve()));
    await hf.enqueue("bench", { key: "bench:checkpoint" });
    await ended;
    if (failure) throw failure;
  } finally {
    await worker.stop();
    await hf.close();
    await dropDatabase(adminUrl, url);
  }
  return names.map((variant, i) => ({ variant, ...summarize(times[i] ?? []) }));
}

export function renderCheckpointCost(rows: CheckpointCostResult[]): string {
  return table([
    ["ctx.checkpoint", "n", "p50", "p95", "p99"],
    ...rows.map((c) => [c.variant, String(c.n), fmt(c.p50), fmt(c.p95), fmt(c.p99)]),
  ]);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const server = await startBenchServer();
  try {
    const rows = await checkpointCost(server.url, Number(process.argv[2] ?? 300));
    process.stdout.write(`Cost of a checkpoint call (ms)\n${renderCheckpointCost(rows)}\n`);
  } finally {
    await server.stop();
  }
}
