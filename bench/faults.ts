import pg from "pg";
import { pino } from "pino";
import { Holdfast } from "../src/index.js";
import { startWorkerProcess, type WorkerProcess } from "../test/support/processes.js";
import { createRunsTable } from "../test/support/runs.js";
import { createDatabase, dropDatabase, sleep, until } from "./db.js";
import { round, type Summary, summarize } from "./stats.js";
import type { DeriverSystem } from "./systems/deriver.js";
import type { QueueSystem } from "./systems/types.js";

export interface TakeoverResult {
  system: string;
  /** Seconds from SIGKILL to the task's restart elsewhere. */
  measured?: Summary;
  /** Recovery time in seconds when it is a documented setting rather than a measurement. */
  documentedSeconds?: number;
  note: string;
  /** Rounds where no takeover was seen, with what the surviving worker reported. */
  missed?: string[];
}

/**
 * holdfast: two worker processes; a long task starts on one, which is SIGKILLed; measured until
 * the other starts attempt 2 (event timestamps from the children vs the kill time here).
 */
export async function holdfastTakeover(adminUrl: string, rounds: number): Promise<TakeoverResult> {
  const url = await createDatabase(adminUrl, "takeover");
  const hf = new Holdfast({ connectionString: url, logger: pino({ level: "silent" }) });
  await hf.migrate();
  const pool = new pg.Pool({ connectionString: url, max: 2 });
  await createRunsTable(pool);
  const procs: WorkerProcess[] = [
    await startWorkerProcess(url, "a"),
    await startWorkerProcess(url, "b"),
  ];
  const out: number[] = [];
  const missed: string[] = [];
  try {
    for (let i = 0; i < rounds; i++) {
      const { id } = await hf.enqueue("job", { key: `takeover${i}`, payload: { ms: 120_000 } });
      const isStart = (e: { event: string; id?: unknown }) => e.event === "start" && e.id === id;
      await until(() => procs.some((p) => p.events.some(isStart)), 30_000, 2);
      const first = procs.find((p) => p.events.some(isStart)) as WorkerProcess;
      const other = procs.find((p) => p !== first) as WorkerProcess;
      const killedAt = Date.now();
      await first.kill("SIGKILL");
      const restart = await other
        .waitFor((e) => e.event === "start" && e.id === id && e.attempt === 2, 30_000)
        .catch(() => undefined);
      if (restart) out.push((restart.at - killedAt) / 1000);
      else {
        // Kept in the results: a takeover that did not happen is a finding, not a bench crash.
        missed.push(
          `round ${i}: killed ${first.name}; ${other.name} saw ${other.events.map((e) => JSON.stringify(e)).join(" ")}`,
        );
      }
      await hf.cancel(id);
      procs[procs.indexOf(first)] = await startWorkerProcess(url, `${first.name}${i}`);
    }
  } finally {
    await Promise.all(procs.map((p) => p.kill("SIGKILL")));
    await hf.close();
    await pool.end();
    await dropDatabase(adminUrl, url);
  }
  return {
    system: "holdfast",
    measured: summarize(out),
    note: "measured, SIGKILL of a child process",
  };
}

/** The deriver model with a scaled stale timeout: crash a worker mid-task, time the restart. */
export async function deriverTakeover(
  adminUrl: string,
  make: () => DeriverSystem,
  staleMs: number,
): Promise<TakeoverResult> {
  const url = await createDatabase(adminUrl, "dtakeover");
  const sys = make();
  await sys.setup(url);
  let starts = 0;
  let restartAt = 0;
  const handler = async () => {
    starts++;
    if (starts === 2) restartAt = Date.now();
    await sleep(staleMs * 4);
  };
  const a = await sys.startWorker(1, handler);
  await sys.enqueue("d1");
  await until(() => starts === 1, 10_000, 2);
  await sys.crash(0);
  const killedAt = Date.now();
  const b = await sys.startWorker(1, handler);
  await until(() => starts >= 2, staleMs * 10, 5);
  await b.stop().catch(() => {});
  await a.stop().catch(() => {});
  await sys.close();
  await dropDatabase(adminUrl, url);
  const scaled = round((restartAt - killedAt) / 1000, 2);
  return {
    system: "deriver model",
    documentedSeconds: 5 * 60,
    note: `stale timeout 5 min (+ cleanup period); scaled to ${staleMs} ms: measured ${scaled} s`,
  };
}

export interface LongTaskResult {
  system: string;
  tasks: number;
  runs: number;
  duplicates: number;
  overlaps: number;
  note: string;
}

/**
 * Three workers, `tasks` tasks on distinct keys, each running `taskMs` (longer than the scaled
 * stale/expiry timeout). Counts handler starts beyond one per task and overlapping runs of a key.
 */
export async function longTasks(
  adminUrl: string,
  system: QueueSystem,
  tasks: number,
  taskMs: number,
  note: string,
): Promise<LongTaskResult> {
  const url = await createDatabase(adminUrl, "long");
  await system.setup(url);
  const runs: Array<{ key: string; start: number; end: number }> = [];
  const handler = async (key: string) => {
    const run = { key, start: Date.now(), end: Number.POSITIVE_INFINITY };
    runs.push(run);
    await sleep(taskMs);
    run.end = Date.now();
  };
  const workers = [];
  for (let i = 0; i < 3; i++) workers.push(await system.startWorker(1, handler));
  for (let i = 0; i < tasks; i++) await system.enqueue(`long${i}`);
  // Watch for twice the task time after the last start: late duplicates show up here.
  await until(() => runs.length >= tasks, 30_000, 10);
  let seen = -1;
  while (seen !== runs.length) {
    seen = runs.length;
    await sleep(taskMs * 2);
  }
  await Promise.all(workers.map((w) => w.stop().catch(() => {})));
  await system.close();
  await dropDatabase(adminUrl, url);
  let overlaps = 0;
  for (const a of runs)
    for (const b of runs)
      if (a !== b && a.key === b.key && a.start <= b.start && b.start < a.end) overlaps++;
  const keys = new Set(runs.map((r) => r.key));
  return {
    system: system.label,
    tasks,
    runs: runs.length,
    duplicates: runs.length - keys.size,
    overlaps,
    note,
  };
}
