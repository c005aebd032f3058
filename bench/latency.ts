import { performance } from "node:perf_hooks";
import pg from "pg";
import { createDatabase, dropDatabase, sleep, until } from "./db.js";
import { round, type Summary, summarize } from "./stats.js";
import type { QueueSystem } from "./systems/types.js";

export interface WakeResult extends Summary {
  system: string;
  note?: string;
}

/** NOTIFY → LISTEN floor: commit of a NOTIFY on one session → notification on another. */
export async function notifyFloor(adminUrl: string, samples: number): Promise<WakeResult> {
  const url = await createDatabase(adminUrl, "floor");
  const listener = new pg.Client({ connectionString: url });
  const sender = new pg.Client({ connectionString: url });
  await listener.connect();
  await sender.connect();
  await listener.query("listen bench_floor");
  const out: number[] = [];
  try {
    for (let i = 0; i < samples; i++) {
      const got = new Promise<number>((resolve) =>
        listener.once("notification", () => resolve(performance.now())),
      );
      await sender.query("select pg_notify('bench_floor', $1)", [String(i)]);
      const committed = performance.now();
      out.push((await got) - committed);
      await sleep(2 + Math.random() * 3);
    }
  } finally {
    await listener.end();
    await sender.end();
    await dropDatabase(adminUrl, url);
  }
  return {
    system: "NOTIFY→LISTEN floor",
    ...summarize(out),
    note: "< 0: the notification overtook the commit acknowledgement",
  };
}

/**
 * Wake latency of an idle worker: enqueue one task, wait until its handler started and the
 * worker is idle again, repeat. Measured from the enqueue's commit acknowledgement to the
 * handler's first line, both in this process. Polling systems get fewer samples (time budget).
 */
export async function wakeLatency(
  adminUrl: string,
  system: QueueSystem,
  samples: number,
  budgetMs: number,
  maxGapMs: number,
): Promise<WakeResult> {
  const url = await createDatabase(adminUrl, "wake");
  await system.setup(url);
  let onStart: ((t: number) => void) | undefined;
  let active = 0;
  const worker = await system.startWorker(1, async () => {
    active++;
    onStart?.(performance.now());
    active--;
  });
  const out: number[] = [];
  const deadline = Date.now() + budgetMs;
  try {
    // Warm-up: first task pays connection and plan-cache costs.
    for (let i = 0; i < (maxGapMs > 100 ? 1 : 3); i++) {
      const started = new Promise<number>((r) => (onStart = r));
      await system.enqueue(`warm${i}`);
      await started;
    }
    for (let i = 0; i < samples && Date.now() < deadline; i++) {
      await until(async () => active === 0 && (await system.remaining()) === 0, 10_000, 1);
      await sleep(3 + Math.random() * (maxGapMs - 3));
      const started = new Promise<number>((r) => (onStart = r));
      await system.enqueue(`w${i}`);
      const committed = performance.now();
      out.push((await started) - committed);
    }
  } finally {
    await worker.stop();
    await system.close();
    await dropDatabase(adminUrl, url);
  }
  const res: WakeResult = { system: system.label, ...summarize(out) };
  if (out.length < samples) res.note = `${out.length} samples (time budget)`;
  return res;
}

export interface ThroughputResult {
  system: string;
  tasks: number;
  keys: number | "distinct";
  seconds: number;
  perSecond: number;
  overlaps: number;
  note?: string;
}

/** Drains `n` bulk-enqueued no-op tasks with one worker at concurrency 10. */
export async function throughput(
  adminUrl: string,
  system: QueueSystem,
  n: number,
  keys: number,
  timeoutMs: number,
): Promise<ThroughputResult> {
  const url = await createDatabase(adminUrl, "tput");
  await system.setup(url);
  await system.bulkEnqueue(n, keys);
  const running = new Map<string, number>();
  let overlaps = 0;
  let handled = 0;
  const t0 = performance.now();
  const worker = await system.startWorker(10, async (key) => {
    const c = (running.get(key) ?? 0) + 1;
    running.set(key, c);
    if (keys > 0 && c > 1) overlaps++;
    await new Promise<void>((r) => setImmediate(r));
    running.set(key, (running.get(key) ?? 1) - 1);
    handled++;
  });
  let seconds = Number.NaN;
  let done = n;
  try {
    const deadline = Date.now() + timeoutMs;
    await until(() => handled >= n, timeoutMs, 10);
    const ok = await until(async () => (await system.remaining()) === 0, deadline - Date.now(), 10);
    seconds = (performance.now() - t0) / 1000;
    if (!ok) done = n - (await system.remaining());
  } finally {
    await worker.stop();
    await system.close();
    await dropDatabase(adminUrl, url);
  }
  return {
    system: system.label,
    tasks: n,
    keys: keys > 0 ? keys : "distinct",
    seconds: round(seconds, 2),
    perSecond: Math.round(done / seconds),
    overlaps,
    ...(done < n ? { note: `timed out: ${done} of ${n} done` } : {}),
  };
}
