import pg from "pg";
import { pino } from "pino";
import { Holdfast } from "../src/index.js";
import { createDatabase, dropDatabase, sleep } from "./db.js";

export interface StorageSample {
  /** Seconds since the load started. */
  at: number;
  /** Table + index bytes of tasks, attempts, keys and key_kinds. */
  bytes: number;
  tasks: number;
  deadTuples: number;
  handled: number;
}

export interface StorageResult {
  retention: string;
  minutes: number;
  /** Tasks per second offered (distinct keys + hot keys). */
  offered: number;
  /** Tasks per second handled over the run. */
  perSecond: number;
  /** Size at the end over size at minute 3 (plateau: at most 1.25). */
  growth: number | null;
  /** Bytes per task kept at the end (all four tables with their indexes). */
  bytesPerTask: number | null;
  /** Rows pruned per second (tasks), over the run. */
  prunedPerSecond: number;
  /** Autovacuum runs on the four tables over the run. */
  autovacuums: number;
  samples: StorageSample[];
}

const tables = ["tasks", "attempts", "keys", "key_kinds"];

/**
 * Steady state: one worker process at a sustained load (distinct keys plus 100 hot keys) with
 * a short retention (or none), sampling table and index sizes every `sampleMs`. With
 * retention the size must plateau (end ≤ 1.25 × minute 3) and throughput stay within 10 % of
 * the run without. `npm run bench -- --only storage [--minutes N]`; not in the quick run.
 */
export async function storageSoak(
  adminUrl: string,
  opts: {
    minutes: number;
    distinctPerSecond: number;
    hotPerSecond: number;
    retention: string | null;
    sampleMs: number;
    log: (s: string) => void;
  },
): Promise<StorageResult> {
  const url = await createDatabase(adminUrl, "storage");
  const hf = new Holdfast({ connectionString: url, logger: pino({ level: "silent" }) });
  await hf.migrate();
  const forever = { succeeded: null, cancelled: null, failed: null };
  const r = opts.retention;
  await hf.defineKind("soak", {
    retention: r === null ? forever : { succeeded: r, cancelled: r, failed: r },
  });
  const pool = new pg.Pool({ connectionString: url, max: 3 });
  pool.on("error", () => {});
  let handled = 0;
  let pruned = 0;
  const worker = hf.worker({
    concurrency: 20,
    prefetch: 20,
    handlers: { soak: async () => {} },
  });
  worker.on("task:end", () => handled++);
  worker.on("pruned", (p) => {
    pruned += p.tasks;
  });
  await worker.start();

  const stats = async () => {
    const { rows } = await pool.query<{
      bytes: string;
      tasks: string;
      dead: string;
      vacuums: string;
    }>(
      `select sum(pg_total_relation_size(s.relid))::text as bytes,
         sum(s.n_live_tup) filter (where s.relname = 'tasks')::text as tasks,
         sum(s.n_dead_tup)::text as dead, sum(s.autovacuum_count)::text as vacuums
       from pg_stat_user_tables s where s.schemaname = 'holdfast' and s.relname = any ($1)`,
      [tables],
    );
    const row = rows[0];
    return {
      bytes: Number(row?.bytes ?? 0),
      tasks: Number(row?.tasks ?? 0),
      dead: Number(row?.dead ?? 0),
      vacuums: Number(row?.vacuums ?? 0),
    };
  };

  // The producer: every 100 ms, a tenth of a second's tasks in one statement.
  const tickMs = 100;
  let next = 0;
  let stop = false;
  const producer = (async () => {
    const distinct = Math.round((opts.distinctPerSecond * tickMs) / 1000);
    const hot = Math.round((opts.hotPerSecond * tickMs) / 1000);
    let at = performance.now();
    while (!stop) {
      const keys: string[] = [];
      for (let i = 0; i < distinct; i++) keys.push(`d:${next++}`);
      for (let i = 0; i < hot; i++) keys.push(`hot:${(next + i) % 100}`);
      await pool.query("select holdfast.enqueue('soak', k) from unnest($1::text[]) k", [keys]);
      at += tickMs;
      await sleep(Math.max(0, at - performance.now()));
    }
  })();

  const samples: StorageSample[] = [];
  const t0 = performance.now();
  const vacuums0 = (await stats()).vacuums;
  const end = t0 + opts.minutes * 60_000;
  while (performance.now() < end) {
    await sleep(Math.min(opts.sampleMs, end - performance.now()));
    const s = await stats();
    const sample = {
      at: Math.round((performance.now() - t0) / 1000),
      bytes: s.bytes,
      tasks: s.tasks,
      deadTuples: s.dead,
      handled,
    };
    samples.push(sample);
    opts.log(`    ${JSON.stringify(sample)}`);
  }
  const seconds = (performance.now() - t0) / 1000;
  const done = handled;
  stop = true;
  await producer;
  const last = await stats();
  await worker.stop();
  await hf.close();
  await pool.end();
  await dropDatabase(adminUrl, url);

  const atMin3 = samples.find((s) => s.at >= 180);
  const final = samples.at(-1);
  return {
    retention: r ?? "forever",
    minutes: opts.minutes,
    offered: opts.distinctPerSecond + opts.hotPerSecond,
    perSecond: Math.round(done / seconds),
    growth: atMin3 && final ? Math.round((final.bytes / atMin3.bytes) * 100) / 100 : null,
    bytesPerTask: final && final.tasks > 0 ? Math.round(final.bytes / final.tasks) : null,
    prunedPerSecond: Math.round(pruned / seconds),
    autovacuums: last.vacuums - vacuums0,
    samples,
  };
}
