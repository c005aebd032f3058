import pg from "pg";
import { PgBoss } from "pg-boss";
import { quietPool } from "../db.js";
import type { QueueSystem, RunningWorker } from "../systems/types.js";

const queue = "noop";

/**
 * pg-boss used as a library. `tuned` = its documented low-latency settings: LISTEN/NOTIFY wake
 * (useListenNotify + queue notify), batch fetch with burst while batches come back full, the
 * shortest polling interval. Per-key exclusion maps to groups with groupConcurrency 1.
 */
export class PgBossSystem implements QueueSystem {
  readonly label: string;
  private url = "";
  private producer: PgBoss | undefined;
  private workers: PgBoss[] = [];
  private pool: pg.Pool | undefined;
  private keyed = false;

  constructor(
    private readonly tuned: boolean,
    private readonly queueOptions: { expireInSeconds?: number } = {},
  ) {
    this.label = `pg-boss (${tuned ? "tuned" : "default"})`;
  }

  /** Workers get pg-boss defaults; the producer is a plain client (no maintenance, no cron). */
  private make(producer = false): PgBoss {
    const boss = new PgBoss({
      connectionString: this.url,
      max: 4,
      ...(this.tuned ? { useListenNotify: true } : {}),
      ...(producer ? { supervise: false, schedule: false } : {}),
    });
    boss.on("error", () => {});
    return boss;
  }

  async setup(url: string): Promise<void> {
    this.url = url;
    this.producer = this.make(true);
    await this.producer.start();
    await this.producer.createQueue(queue, {
      ...this.queueOptions,
      ...(this.tuned ? { notify: true } : {}),
    });
    this.pool = new pg.Pool({ connectionString: url, max: 2 });
    quietPool(this.pool);
  }

  attach(url: string, keys: number): void {
    this.url = url;
    this.keyed = keys > 0;
  }

  async enqueue(key: string): Promise<void> {
    await this.producer?.send(queue, { key }, this.keyed ? { group: { id: key } } : {});
  }

  async bulkEnqueue(n: number, keys: number): Promise<void> {
    this.keyed = keys > 0;
    const jobs = Array.from({ length: n }, (_, i) => {
      const key = `k${keys > 0 ? i % keys : i}`;
      return keys > 0 ? { data: { key }, group: { id: key } } : { data: { key } };
    });
    for (let i = 0; i < jobs.length; i += 5000) {
      await this.producer?.insert(queue, jobs.slice(i, i + 5000));
    }
    await this.pool?.query("analyze");
  }

  async startWorker(
    concurrency: number,
    handler: (key: string) => Promise<void>,
  ): Promise<RunningWorker> {
    const boss = this.make();
    this.workers.push(boss);
    await boss.start();
    const run = async (jobs: Array<{ data: { key: string } }>) => {
      await Promise.all(jobs.map((j) => handler(j.data.key)));
    };
    const group = this.keyed ? { groupConcurrency: 1 } : {};
    if (this.tuned) {
      // One fetch loop taking up to `concurrency` jobs per round trip.
      await boss.work(
        queue,
        { batchSize: concurrency, burstWhenBatchFull: true, pollingIntervalSeconds: 0.5, ...group },
        run,
      );
    } else {
      await boss.work(queue, { localConcurrency: concurrency, ...group }, run);
    }
    return { stop: () => boss.stop({ graceful: true }) };
  }

  async remaining(): Promise<number> {
    const { rows } = await (this.pool as pg.Pool).query<{ n: number }>(
      "select count(*)::int as n from pgboss.job where name = $1 and state <> 'completed'",
      [queue],
    );
    return rows[0]?.n ?? 0;
  }

  async close(): Promise<void> {
    for (const w of this.workers) await w.stop({ graceful: false }).catch(() => {});
    await this.producer?.stop({ graceful: false });
    await this.pool?.end();
  }
}
