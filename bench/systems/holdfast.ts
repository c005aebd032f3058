import pg from "pg";
import { pino } from "pino";
import { Holdfast } from "../../src/index.js";
import { quietPool } from "../db.js";
import type { QueueSystem, RunningWorker } from "./types.js";

const silent = pino({ level: "silent" });

/**
 * holdfast with its defaults, or tuned for short tasks: `prefetch` claims ahead of free slots,
 * up to 50 tasks in hand at concurrency 10, as graphile-worker's tuned local queue holds.
 */
export class HoldfastSystem implements QueueSystem {
  readonly label: string;
  private hf: Holdfast | undefined;
  private pool: pg.Pool | undefined;
  private workers: Holdfast[] = [];
  private url = "";

  /** keep: whether successes are kept (the default day) or leave at completion (retention 0,
   *  graphile-worker's own behaviour: the like-for-like row). */
  constructor(
    private readonly tuned = false,
    private readonly keep = true,
  ) {
    const notes = [...(tuned ? ["prefetch"] : []), ...(keep ? [] : ["retention 0"])];
    this.label = notes.length > 0 ? `holdfast (${notes.join(", ")})` : "holdfast";
  }

  async setup(url: string): Promise<void> {
    this.url = url;
    this.pool = new pg.Pool({ connectionString: url, max: 4 });
    quietPool(this.pool);
    this.hf = new Holdfast({ pool: this.pool, logger: silent });
    await this.hf.migrate();
    await this.pool.query(
      this.keep
        ? "select holdfast.define_kind('noop')"
        : "select holdfast.define_kind('noop', retain_succeeded => interval '0')",
    );
  }

  attach(url: string): void {
    this.url = url;
  }

  async enqueue(key: string): Promise<void> {
    await this.hf?.enqueue("noop", { key, payload: {} });
  }

  async bulkEnqueue(n: number, keys: number): Promise<void> {
    await this.pool?.query(
      `select holdfast.enqueue('noop', 'k' || case when $2::int > 0 then i % $2::int else i end)
       from generate_series(1, $1::int) i`,
      [n, keys],
    );
    await this.pool?.query("analyze");
  }

  async startWorker(
    concurrency: number,
    handler: (key: string) => Promise<void>,
  ): Promise<RunningWorker> {
    // A worker process of its own: its own Holdfast (lock session + LISTEN session + app pool).
    const hf = new Holdfast({ connectionString: this.url, logger: silent });
    this.workers.push(hf);
    const worker = hf.worker({
      concurrency,
      ...(this.tuned ? { prefetch: Math.max(concurrency * 5, 50) - concurrency } : {}),
      handlers: { noop: async (task) => await handler(task.key) },
    });
    await worker.start();
    return { stop: () => worker.stop() };
  }

  async remaining(): Promise<number> {
    const { rows } = await (this.pool as pg.Pool).query<{ n: number }>(
      "select count(*)::int as n from holdfast.tasks where state in ('pending', 'running')",
    );
    return rows[0]?.n ?? 0;
  }

  async close(): Promise<void> {
    for (const w of this.workers) await w.close();
    await this.hf?.close();
    await this.pool?.end();
  }
}
