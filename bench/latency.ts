import { performance } from "node:perf_hooks";
import pg from "pg";
import { createDatabase, dropDatabase, sleep, until } from "./db.js";
import { round, type Summary, summarize } from "./stats.js";
import type { QueueSystem } from "./systems/types.js";

export interface WakeResult extends Summary {
  system: string;
  /** LISTEN systems: enqueued 25 ms after the previous task's handler returned (its
   *  completion and whatever the worker does after it may still be on the way); the main
   *  figures are then an idle worker's, enqueued 1 s after the previous task ended. */
  afterCompletion?: Summary;
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

/** The gaps of the two wake measurements of a LISTEN system, from the previous handler's end. */
export const wakeGaps = { idleMs: 1_000, afterCompletionMs: 25 };

/**
 * Wake latency: enqueue one task, wait until its handler started and its completion is
 * recorded, repeat. Measured from the enqueue's commit acknowledgement to the handler's first
 * line, both in this process. A LISTEN system (`idleSamples` > 0) is measured two ways,
 * interleaved: enqueued `wakeGaps.idleMs` after the previous handler returned (an idle worker:
 * the main figures) and `wakeGaps.afterCompletionMs` after it (`afterCompletion`: what the
 * worker does after a task must not delay the next one's wake). Polling systems get a random
 * gap up to `maxGapMs` instead (it samples the poll phase uniformly) and fewer samples (time
 * budget).
 */
export async function wakeLatency(
  adminUrl: string,
  system: QueueSystem,
  samples: number,
  budgetMs: number,
  maxGapMs: number,
  idleSamples = 0,
): Promise<WakeResult> {
  const url = await createDatabase(adminUrl, "wake");
  await system.setup(url);
  let onStart: ((t: number) => void) | undefined;
  let active = 0;
  let endedAt = 0;
  const worker = await system.startWorker(1, async () => {
    active++;
    onStart?.(performance.now());
    active--;
    endedAt = performance.now();
  });
  const idle: number[] = [];
  const after: number[] = [];
  let late = 0;
  const deadline = Date.now() + budgetMs;
  const total = idleSamples > 0 ? samples + idleSamples : samples;
  try {
    // Warm-up: first task pays connection and plan-cache costs.
    for (let i = 0; i < (maxGapMs > 100 ? 1 : 3); i++) {
      const started = new Promise<number>((r) => (onStart = r));
      await system.enqueue(`warm${i}`);
      await started;
    }
    for (let i = 0; i < total && Date.now() < deadline; i++) {
      await until(async () => active === 0 && (await system.remaining()) === 0, 10_000, 1);
      // Idle samples spread evenly among the others (sample i is idle when the running count
      // of idle samples due steps up).
      const isIdle =
        idleSamples > 0 &&
        Math.floor(((i + 1) * idleSamples) / total) > Math.floor((i * idleSamples) / total);
      if (idleSamples === 0) await sleep(3 + Math.random() * (maxGapMs - 3));
      else {
        const wait = endedAt + (isIdle ? wakeGaps.idleMs : wakeGaps.afterCompletionMs);
        if (performance.now() > wait) late++;
        else await sleep(wait - performance.now());
      }
      const started = new Promise<number>((r) => (onStart = r));
      await system.enqueue(`w${i}`);
      const committed = performance.now();
      const ms = (await started) - committed;
      if (idleSamples === 0 || isIdle) idle.push(ms);
      else after.push(ms);
    }
  } finally {
    await worker.stop();
    await system.close();
    await dropDatabase(adminUrl, url);
  }
  const res: WakeResult = { system: system.label, ...summarize(idle) };
  if (idleSamples > 0) res.afterCompletion = summarize(after);
  const notes: string[] = [];
  if (idle.length + after.length < total)
    notes.push(`${idle.length + after.length} samples (time budget)`);
  if (late > 0) notes.push(`${late} completions recorded after the gap`);
  if (notes.length > 0) res.note = notes.join("; ");
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
