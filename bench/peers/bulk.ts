// The peers' bulk paths for bench/bulk-enqueue.ts: graphile-worker's addJobs and pg-boss's
// insert, each called once per round with every job.
import { Logger, makeWorkerUtils, runMigrations, type WorkerUtils } from "graphile-worker";
import pg from "pg";
import { PgBoss } from "pg-boss";
import type { BulkEnqueuer } from "../bulk-enqueue.js";
import { quietPool } from "../db.js";

const silent = new Logger(() => () => {});
const key = (i: number, keys: number, round: number) =>
  keys > 0 ? `k${i % keys}` : `r${round}:${i}`;

export class GraphileBulk implements BulkEnqueuer {
  readonly label = "graphile-worker";
  readonly call = "addJobs (one call)";
  private utils: WorkerUtils | undefined;
  private pool: pg.Pool | undefined;

  async setup(url: string): Promise<void> {
    await runMigrations({ connectionString: url, logger: silent });
    this.utils = await makeWorkerUtils({ connectionString: url, logger: silent });
    this.pool = quietPool(new pg.Pool({ connectionString: url, max: 1 }));
  }

  async enqueue(n: number, keys: number, round: number): Promise<void> {
    // A named queue per key: its jobs run one at a time, as a holdfast key's do.
    await this.utils?.addJobs(
      Array.from({ length: n }, (_, i) => ({
        identifier: "noop",
        payload: { i },
        ...(keys > 0 ? { queueName: key(i, keys, round) } : {}),
      })),
    );
  }

  async count(): Promise<number> {
    const { rows } = await (this.pool as pg.Pool).query<{ n: number }>(
      "select count(*)::int as n from graphile_worker._private_jobs",
    );
    return rows[0]?.n ?? 0;
  }

  async close(): Promise<void> {
    await this.utils?.release();
    await this.pool?.end();
  }
}

export class PgBossBulk implements BulkEnqueuer {
  readonly label = "pg-boss";
  readonly call = "insert (one call)";
  private boss: PgBoss | undefined;
  private pool: pg.Pool | undefined;

  async setup(url: string): Promise<void> {
    this.boss = new PgBoss({ connectionString: url, max: 2, supervise: false, schedule: false });
    this.boss.on("error", () => {});
    await this.boss.start();
    await this.boss.createQueue("noop");
    this.pool = quietPool(new pg.Pool({ connectionString: url, max: 1 }));
  }

  async enqueue(n: number, keys: number, round: number): Promise<void> {
    // A group per key with groupConcurrency 1 at the worker: pg-boss's per-key exclusion.
    await this.boss?.insert(
      "noop",
      Array.from({ length: n }, (_, i) =>
        keys > 0 ? { data: { i }, group: { id: key(i, keys, round) } } : { data: { i } },
      ),
    );
  }

  async count(): Promise<number> {
    const { rows } = await (this.pool as pg.Pool).query<{ n: number }>(
      "select count(*)::int as n from pgboss.job where name = 'noop'",
    );
    return rows[0]?.n ?? 0;
  }

  async close(): Promise<void> {
    await this.boss?.stop({ graceful: false });
    await this.pool?.end();
  }
}
