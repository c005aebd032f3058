import pg from "pg";
import { quietPool } from "../db.js";

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

import type { QueueSystem, RunningWorker } from "./types.js";

/** Timings of the deriver's scheme; production values: 1 s poll, 5 min stale, cleanup each poll. */
export interface DeriverTimings {
  pollMs: number;
  staleMs: number;
  cleanupEveryMs: number;
}

export const deriverProduction: DeriverTimings = {
  pollMs: 1_000,
  staleMs: 5 * 60_000,
  cleanupEveryMs: 60_000,
};

const schema = `
create table if not exists queue (
  id bigserial primary key,
  work_unit_key text not null,
  payload jsonb not null default '{}',
  processed boolean not null default false,
  created_at timestamptz not null default now());
create index if not exists queue_unprocessed on queue (work_unit_key, id) where not processed;
create table if not exists active_queue_sessions (
  work_unit_key text primary key,
  worker text,
  last_updated timestamptz not null default now());`;

/**
 * A model of the deriver's current scheme (Honcho): a worker claims a work unit by inserting its
 * key into active_queue_sessions, drains that unit's queue items one by one (refreshing
 * last_updated only between items), deletes the claim when the unit is empty. A cleanup loop
 * deletes claims whose last_updated is older than the stale timeout. Idle workers poll, backing
 * off up to `pollMs`. No NOTIFY; ownership is a row, not a session.
 */
export class DeriverSystem implements QueueSystem {
  readonly label: string;
  private pool: pg.Pool | undefined;
  private url = "";
  private workers: DeriverWorker[] = [];

  constructor(
    private readonly timings: DeriverTimings,
    label = "deriver model",
  ) {
    this.label = label;
  }

  async setup(url: string): Promise<void> {
    this.url = url;
    this.pool = new pg.Pool({ connectionString: url, max: 4 });
    quietPool(this.pool);
    await this.pool.query(schema);
  }

  attach(url: string): void {
    this.url = url;
  }

  async enqueue(key: string): Promise<void> {
    await this.pool?.query("insert into queue (work_unit_key) values ($1)", [key]);
  }

  async bulkEnqueue(n: number, keys: number): Promise<void> {
    await this.pool?.query(
      `insert into queue (work_unit_key)
       select 'k' || case when $2::int > 0 then i % $2::int else i end from generate_series(1, $1::int) i`,
      [n, keys],
    );
    await this.pool?.query("analyze");
  }

  async startWorker(
    concurrency: number,
    handler: (key: string) => Promise<void>,
  ): Promise<RunningWorker> {
    const w = new DeriverWorker(this.url, this.timings, concurrency, handler);
    this.workers.push(w);
    w.start();
    return { stop: () => w.stop(false) };
  }

  /** Simulates a crash: the worker stops at once and leaves its claims behind. */
  async crash(index: number): Promise<void> {
    await this.workers[index]?.stop(true);
  }

  async remaining(): Promise<number> {
    const { rows } = await (this.pool as pg.Pool).query<{ n: number }>(
      "select count(*)::int as n from queue where not processed",
    );
    return rows[0]?.n ?? 0;
  }

  async close(): Promise<void> {
    for (const w of this.workers) await w.stop(true);
    await this.pool?.end();
  }
}

class DeriverWorker {
  private readonly pool: pg.Pool;
  private stopped = false;
  private crashed = false;
  private readonly units = new Set<Promise<void>>();
  private wake: (() => void) | undefined;
  private loop: Promise<void> | undefined;
  private cleanupTimer: NodeJS.Timeout | undefined;
  private readonly name = `deriver-${Math.random().toString(36).slice(2, 8)}`;

  constructor(
    url: string,
    private readonly t: DeriverTimings,
    private readonly concurrency: number,
    private readonly handler: (key: string) => Promise<void>,
  ) {
    this.pool = new pg.Pool({ connectionString: url, max: concurrency + 1 });
    quietPool(this.pool);
  }

  start(): void {
    this.cleanupTimer = setInterval(() => void this.cleanup(), this.t.cleanupEveryMs);
    this.loop = this.poll();
  }

  async stop(crash: boolean): Promise<void> {
    this.stopped = true;
    this.crashed = crash;
    if (this.cleanupTimer) clearInterval(this.cleanupTimer);
    this.wake?.();
    await this.loop;
    if (!crash) await Promise.all(this.units);
    await this.pool.end().catch(() => {});
  }

  private async cleanup(): Promise<void> {
    await this.pool
      .query(
        "delete from active_queue_sessions where last_updated < now() - $1::float8 * interval '1 ms'",
        [this.t.staleMs],
      )
      .catch(() => {});
  }

  /** Poll loop: claim free work units; sleep pollMs when none; back off on errors. */
  private async poll(): Promise<void> {
    let errorDelay = this.t.pollMs;
    while (!this.stopped) {
      const free = this.concurrency - this.units.size;
      let claimed: string[] = [];
      if (free > 0) {
        try {
          claimed = await this.claim(free);
          errorDelay = this.t.pollMs;
        } catch {
          await sleep(errorDelay);
          errorDelay = Math.min(errorDelay * 2, 30_000);
          continue;
        }
      }
      for (const key of claimed) {
        const p = this.drain(key).finally(() => {
          this.units.delete(p);
          this.wake?.();
        });
        this.units.add(p);
      }
      if (claimed.length > 0 && claimed.length === free) continue;
      // Sleeps pollMs, or until a unit finishes (a free slot claims again at once).
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.t.pollMs);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.wake = undefined;
    }
  }

  private async claim(free: number): Promise<string[]> {
    const { rows } = await this.pool.query<{ work_unit_key: string }>(
      `insert into active_queue_sessions (work_unit_key, worker)
       select distinct q.work_unit_key, $2 from (
         select work_unit_key from queue q
         where not processed
           and not exists (select 1 from active_queue_sessions a where a.work_unit_key = q.work_unit_key)
         order by id limit $1 * 4) q
       limit $1
       on conflict (work_unit_key) do nothing
       returning work_unit_key`,
      [free, this.name],
    );
    return rows.map((r) => r.work_unit_key);
  }

  /** Processes a unit's items in order, refreshing the claim between items (never during one). */
  private async drain(key: string): Promise<void> {
    while (!this.crashed) {
      const { rows } = await this.pool.query<{ id: string }>(
        "select id from queue where work_unit_key = $1 and not processed order by id limit 1",
        [key],
      );
      const item = rows[0];
      if (!item) break;
      await this.handler(key);
      if (this.crashed) return;
      await this.pool.query("update queue set processed = true where id = $1", [item.id]);
      await this.pool.query(
        "update active_queue_sessions set last_updated = now() where work_unit_key = $1",
        [key],
      );
    }
    if (!this.crashed) {
      await this.pool.query("delete from active_queue_sessions where work_unit_key = $1", [key]);
    }
  }
}
