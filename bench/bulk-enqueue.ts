// Bulk enqueue: one call adding 10,000 tasks, holdfast's enqueueMany beside graphile-worker's
// addJobs and pg-boss's insert (`npm run bench -- --only bulk`). Each system on its own
// database, the rounds interleaved so a changing load falls on all of them alike.
import { performance } from "node:perf_hooks";
import pg from "pg";
import { pino } from "pino";
import { type EnqueueOptions, Holdfast } from "../src/index.js";
import { createDatabase, dropDatabase, quietPool } from "./db.js";
import { table } from "./stats.js";

/** One system's bulk path. */
export interface BulkEnqueuer {
  label: string;
  /** The call measured, as its documentation names it. */
  call: string;
  setup(url: string): Promise<void>;
  /** Adds `n` tasks in one call (keys `k{i % keys}`, or no key/queue/group when keys is 0),
   *  resolving once they are committed. */
  enqueue(n: number, keys: number, round: number): Promise<void>;
  /** Tasks it holds, to check that every round landed. */
  count(): Promise<number>;
  close(): Promise<void>;
}

export interface BulkEnqueueResult {
  system: string;
  call: string;
  items: number;
  keys: number;
  rounds: number;
  /** Per call, ms. */
  medianMs: number;
  minMs: number;
  maxMs: number;
  /** Tasks per second at the median. */
  perSecond: number;
}

function holdfastItems(n: number, keys: number, round: number): EnqueueOptions[] {
  return Array.from({ length: n }, (_, i) => ({
    key: keys > 0 ? `k${i % keys}` : `r${round}:${i}`,
    payload: { i },
  }));
}

/** holdfast.enqueue_many through the pool: one statement. */
export class HoldfastBulk implements BulkEnqueuer {
  readonly label: string = "holdfast";
  readonly call: string = "hf.enqueueMany (one statement)";
  protected pool: pg.Pool | undefined;
  protected hf: Holdfast | undefined;

  async setup(url: string): Promise<void> {
    this.pool = quietPool(new pg.Pool({ connectionString: url, max: 2 }));
    this.hf = new Holdfast({ pool: this.pool, logger: pino({ level: "silent" }) });
    await this.hf.migrate();
    await this.hf.defineKind("noop");
  }

  async enqueue(n: number, keys: number, round: number): Promise<void> {
    await this.hf?.enqueueMany("noop", holdfastItems(n, keys, round));
  }

  async count(): Promise<number> {
    const { rows } = await (this.pool as pg.Pool).query<{ n: number }>(
      "select count(*)::int as n from holdfast.tasks",
    );
    return rows[0]?.n ?? 0;
  }

  async close(): Promise<void> {
    await this.hf?.close();
    await this.pool?.end();
  }
}

/** The same tasks enqueued one call at a time inside one transaction: what enqueueMany saves. */
export class HoldfastLoop extends HoldfastBulk {
  override readonly label = "holdfast, enqueue in a loop";
  override readonly call = "hf.enqueue × n in one transaction ({ client })";

  override async enqueue(n: number, keys: number, round: number): Promise<void> {
    const hf = this.hf as Holdfast;
    const client = await hf.pool.connect();
    try {
      await client.query("begin");
      for (const item of holdfastItems(n, keys, round)) await hf.enqueue("noop", item, { client });
      await client.query("commit");
    } finally {
      client.release();
    }
  }
}

export async function bulkEnqueue(
  adminUrl: string,
  systems: BulkEnqueuer[],
  opts: { items: number; keys: number[]; rounds: number; log: (s: string) => void },
): Promise<BulkEnqueueResult[]> {
  const results: BulkEnqueueResult[] = [];
  const urls: string[] = [];
  try {
    for (const sys of systems) {
      const url = await createDatabase(adminUrl, "bulk");
      urls.push(url);
      await sys.setup(url);
    }
    for (const keys of opts.keys) {
      const times = systems.map(() => [] as number[]);
      // One warm-up call each (plans, caches), then the measured rounds.
      for (let round = 0; round <= opts.rounds; round++) {
        for (const [s, sys] of systems.entries()) {
          const before = await sys.count();
          const t0 = performance.now();
          await sys.enqueue(opts.items, keys, round);
          const ms = performance.now() - t0;
          const added = (await sys.count()) - before;
          if (added !== opts.items)
            throw new Error(`${sys.label}: ${added} of ${opts.items} tasks landed`);
          if (round > 0) times[s]?.push(ms);
        }
      }
      for (const [s, sys] of systems.entries()) {
        const t = [...(times[s] ?? [])].sort((a, b) => a - b);
        const median = t[Math.floor(t.length / 2)] ?? 0;
        results.push({
          system: sys.label,
          call: sys.call,
          items: opts.items,
          keys,
          rounds: t.length,
          medianMs: Math.round(median),
          minMs: Math.round(t[0] ?? 0),
          maxMs: Math.round(t.at(-1) ?? 0),
          perSecond: Math.round((opts.items / median) * 1000),
        });
        opts.log(`  ${JSON.stringify(results.at(-1))}`);
      }
    }
  } finally {
    for (const sys of systems) await sys.close().catch(() => {});
    for (const url of urls) await dropDatabase(adminUrl, url).catch(() => {});
  }
  return results;
}

export function renderBulkEnqueue(rows: BulkEnqueueResult[]): string {
  return table([
    ["system", "call", "tasks", "keys", "rounds", "median ms", "min", "max", "tasks/s"],
    ...rows.map((r) => [
      r.system,
      r.call,
      String(r.items),
      r.keys > 0 ? String(r.keys) : "distinct",
      String(r.rounds),
      String(r.medianMs),
      String(r.minMs),
      String(r.maxMs),
      String(r.perSecond),
    ]),
  ]);
}
