import { Logger, makeWorkerUtils, run, runMigrations, type WorkerUtils } from "graphile-worker";
import pg from "pg";
import { quietPool } from "../db.js";
import type { QueueSystem, RunningWorker } from "../systems/types.js";

const silent = new Logger(() => () => {});

/**
 * graphile-worker used as a library. `tuned` adds its documented batching options (local queue
 * of fetched jobs, batched completions: worker.graphile.org/docs/performance); LISTEN wake is
 * on in both. Per-key exclusion maps to a named queue (jobs of one queue run one at a time).
 */
export class GraphileSystem implements QueueSystem {
  readonly label: string;
  private url = "";
  private utils: WorkerUtils | undefined;
  private pool: pg.Pool | undefined;
  /** Pools handed to graphile-worker, so this process owns their error handling and end. */
  private pools: pg.Pool[] = [];

  constructor(private readonly tuned: boolean) {
    this.label = `graphile-worker (${tuned ? "tuned" : "default"})`;
  }

  async setup(url: string): Promise<void> {
    this.url = url;
    await runMigrations({ connectionString: url, logger: silent });
    this.utils = await makeWorkerUtils({ connectionString: url, logger: silent });
    this.pool = this.newPool(2);
  }

  attach(url: string): void {
    this.url = url;
  }

  private newPool(max: number): pg.Pool {
    const pool = new pg.Pool({ connectionString: this.url, max });
    quietPool(pool);
    this.pools.push(pool);
    return pool;
  }

  async enqueue(key: string): Promise<void> {
    await this.utils?.addJob("noop", { key }, { queueName: key });
  }

  async bulkEnqueue(n: number, keys: number): Promise<void> {
    // keys = 0: no named queue (graphile-worker's unconstrained, fastest path).
    await this.pool?.query(
      `select graphile_worker.add_job('noop', json_build_object('key', k),
         queue_name := case when $2::int > 0 then k end)
       from (select 'k' || case when $2::int > 0 then i % $2::int else i end as k
             from generate_series(1, $1::int) i) s`,
      [n, keys],
    );
    await this.pool?.query("analyze");
  }

  async startWorker(
    concurrency: number,
    handler: (key: string) => Promise<void>,
  ): Promise<RunningWorker> {
    const runner = await run({
      // graphile-worker's default pool size (node-postgres default, 10).
      pgPool: this.newPool(10),
      concurrency,
      noHandleSignals: true,
      logger: silent,
      taskList: {
        noop: async (payload) => await handler((payload as { key: string }).key),
      },
      ...(this.tuned
        ? {
            preset: {
              worker: {
                localQueue: { size: Math.max(concurrency * 5, 50) },
                completeJobBatchDelay: 0,
                failJobBatchDelay: 0,
              },
            },
          }
        : {}),
    });
    return { stop: () => runner.stop() };
  }

  async remaining(): Promise<number> {
    // graphile-worker deletes a job when it completes.
    const { rows } = await (this.pool as pg.Pool).query<{ n: number }>(
      "select count(*)::int as n from graphile_worker._private_jobs",
    );
    return rows[0]?.n ?? 0;
  }

  async close(): Promise<void> {
    await this.utils?.release();
    for (const p of this.pools) await p.end().catch(() => {});
  }
}
