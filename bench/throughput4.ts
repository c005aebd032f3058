import { type ChildProcess, spawn } from "node:child_process";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { createDatabase, dropDatabase, until } from "./db.js";
import type { ThroughputResult } from "./latency.js";
import { round } from "./stats.js";
import { HoldfastSystem } from "./systems/holdfast.js";
import type { QueueSystem } from "./systems/types.js";
import type { FromWorker, Runs, ToWorker } from "./tput-worker.js";

export interface Throughput4Result extends ThroughputResult {
  processes: number;
  /** Tasks each worker process handled (a task run twice counts twice). */
  handledPerProcess: number[];
}

/** The overlap detector run on a system that does run one key twice at once (see overlapCheck). */
export interface OverlapCheckResult {
  processes: number;
  tasks: number;
  keys: number;
  holdMs: number;
  overlaps: number;
  /** Overlaps whose two runs were in different processes. */
  acrossProcesses: number;
}

const runner = fileURLToPath(new URL("tput-worker.ts", import.meta.url));

/** One bench/tput-worker.ts child process, asked one thing at a time over IPC. */
class WorkerChild {
  /** Its latest handled count (reset by attach). */
  handled = 0;
  private stderr = "";
  private failure: Error | undefined;
  private readonly waiters = new Set<() => void>();
  private readonly inbox: FromWorker[] = [];
  private readonly exited: Promise<void>;

  constructor(
    private readonly child: ChildProcess,
    readonly name: string,
  ) {
    child.stderr?.on("data", (d) => {
      this.stderr = (this.stderr + String(d)).slice(-4000);
    });
    child.on("message", (m: FromWorker) => {
      if (m.type === "handled") this.handled = m.n;
      else if (m.type === "error") this.fail(new Error(`${name}: ${m.message}`));
      else this.inbox.push(m);
      this.notify();
    });
    this.exited = new Promise((resolve) =>
      child.once("exit", (code, signal) => {
        this.fail(new Error(`${name} exited (${signal ?? code}); stderr: ${this.stderr}`));
        resolve();
      }),
    );
  }

  private fail(err: Error): void {
    this.failure ??= err;
    this.notify();
  }

  private notify(): void {
    for (const w of this.waiters) w();
  }

  /** Resolves with the next message of `type` (taken from the inbox), rejects on failure. */
  next<T extends FromWorker["type"]>(
    type: T,
    timeoutMs: number,
  ): Promise<Extract<FromWorker, { type: T }>> {
    return new Promise((resolve, reject) => {
      const done = () => {
        this.waiters.delete(check);
        clearTimeout(timer);
      };
      const check = () => {
        const i = this.inbox.findIndex((m) => m.type === type);
        if (i >= 0) {
          done();
          resolve(this.inbox.splice(i, 1)[0] as Extract<FromWorker, { type: T }>);
        } else if (this.failure) {
          done();
          reject(this.failure);
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`${this.name}: no ${type} in ${timeoutMs} ms; stderr: ${this.stderr}`));
      }, timeoutMs);
      this.waiters.add(check);
      check();
    });
  }

  send(m: ToWorker): void {
    if (this.failure) throw this.failure;
    // Every handled count of a run arrives before its "stopped": none is stale after this.
    if (m.type === "attach") this.handled = 0;
    this.child.send(m);
  }

  async ask<T extends FromWorker["type"]>(m: ToWorker, reply: T, timeoutMs = 60_000) {
    this.send(m);
    return await this.next(reply, timeoutMs);
  }

  async kill(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill("SIGKILL");
    await this.exited;
  }
}

/**
 * Worker processes for the 4-process throughput, started once and reused by every run of the
 * section (start-up compiles TypeScript and loads every system's library: seconds each on a
 * shared machine). Each run builds a fresh system instance in each child, as the one-process
 * run builds one in the bench process.
 */
export class WorkerChildren {
  /** The zero of every run's start and end, in every child: CLOCK_MONOTONIC is machine-wide. */
  readonly base = process.hrtime.bigint();

  private constructor(readonly children: WorkerChild[]) {}

  static async start(count: number): Promise<WorkerChildren> {
    const children = Array.from({ length: count }, (_, i) => {
      const child = spawn(process.execPath, ["--import", "tsx", runner], {
        stdio: ["ignore", "ignore", "pipe", "ipc"],
      });
      return new WorkerChild(child, `tput worker ${i}`);
    });
    const all = new WorkerChildren(children);
    try {
      await Promise.all(children.map((c) => c.next("ready", 120_000)));
    } catch (err) {
      await all.close();
      throw err;
    }
    return all;
  }

  async close(): Promise<void> {
    await Promise.all(this.children.map((c) => c.kill()));
  }
}

interface Run {
  key: string;
  start: number;
  end: number;
  process: number;
}

/**
 * Runs of one key that started while another run of that key had not ended, over the runs of
 * every process (the one-process run's count: a start while the key's counter is above zero).
 */
export function countOverlaps(runs: Run[]): { overlaps: number; acrossProcesses: number } {
  const byKey = new Map<string, Run[]>();
  for (const r of runs) {
    const list = byKey.get(r.key);
    if (list) list.push(r);
    else byKey.set(r.key, [r]);
  }
  let overlaps = 0;
  let acrossProcesses = 0;
  for (const list of byKey.values()) {
    list.sort((a, b) => a.start - b.start);
    let latest: Run | undefined; // the run that ends last among those started so far
    for (const cur of list) {
      if (latest && cur.start < latest.end) {
        overlaps++;
        if (cur.process !== latest.process) acrossProcesses++;
      }
      if (!latest || cur.end > latest.end) latest = cur;
    }
  }
  return { overlaps, acrossProcesses };
}

function flatten(reports: Runs[]): Run[] {
  return reports.flatMap((r, process) =>
    r.keys.map((key, i) => ({
      key,
      start: r.starts[i] as number,
      // A run that never returned is open until the end.
      end: r.ends[i] ?? Number.POSITIVE_INFINITY,
      process,
    })),
  );
}

/** Stops every child's worker and closes its system; their handled counts and runs. */
async function stopAll(pool: WorkerChildren) {
  return await Promise.all(pool.children.map((c) => c.ask({ type: "stop" }, "stopped", 120_000)));
}

/**
 * Drains `n` tasks (bulk-enqueued here, before any worker starts) with one worker per child
 * process, each at concurrency 10, each configured as in the one-process run (`system.label`
 * names the same factory in every child). The clock starts when every child has built and
 * attached its system and is told to start its worker (no worker is running yet: the
 * one-process run also starts its clock before `startWorker`, so both include the workers'
 * start-up) and stops when `remaining() === 0`, seen from this process.
 */
export async function throughput4(
  adminUrl: string,
  pool: WorkerChildren,
  system: QueueSystem,
  n: number,
  keys: number,
  timeoutMs: number,
): Promise<Throughput4Result> {
  const url = await createDatabase(adminUrl, "tput4");
  await system.setup(url);
  await system.bulkEnqueue(n, keys);
  const kids = pool.children;
  const attach = { label: system.label, url, keys, base: String(pool.base), holdMs: 0 };
  let seconds = Number.NaN;
  let done = n;
  let reports: Array<{ handled: number } & Runs> = [];
  try {
    await Promise.all(kids.map((c) => c.ask({ type: "attach", ...attach }, "attached")));
    const t0 = performance.now();
    for (const c of kids) c.send({ type: "start" });
    const deadline = Date.now() + timeoutMs;
    await Promise.all(kids.map((c) => c.next("started", timeoutMs)));
    const handled = () => kids.reduce((s, c) => s + c.handled, 0);
    await until(() => handled() >= n, deadline - Date.now(), 10);
    const ok = await until(async () => (await system.remaining()) === 0, deadline - Date.now(), 10);
    seconds = (performance.now() - t0) / 1000;
    if (!ok) done = n - (await system.remaining());
  } finally {
    reports = await stopAll(pool);
    await system.close();
    await dropDatabase(adminUrl, url);
  }
  return {
    system: system.label,
    processes: kids.length,
    tasks: n,
    keys: keys > 0 ? keys : "distinct",
    seconds: round(seconds, 2),
    perSecond: Math.round(done / seconds),
    overlaps: keys > 0 ? countOverlaps(flatten(reports)).overlaps : 0,
    handledPerProcess: reports.map((r) => r.handled),
    ...(done < n ? { note: `timed out: ${done} of ${n} done` } : {}),
  };
}

/**
 * Shows the overlap count of throughput4 is not blind across processes: holdfast with each
 * child process on a database of its own (advisory locks are per database, so no process
 * excludes another), the same 100 keys in each, every run held `holdMs`. Every key then runs
 * in several processes at once; a detector that sees nothing is broken.
 */
export async function overlapCheck(
  adminUrl: string,
  pool: WorkerChildren,
  tasksPerProcess = 400,
  keys = 100,
  holdMs = 5,
): Promise<OverlapCheckResult> {
  const kids = pool.children;
  const systems = kids.map(() => new HoldfastSystem());
  const urls: string[] = [];
  let reports: Runs[] = [];
  try {
    for (const sys of systems) {
      const url = await createDatabase(adminUrl, "tput4check");
      urls.push(url);
      await sys.setup(url);
      await sys.bulkEnqueue(tasksPerProcess, keys);
    }
    await Promise.all(
      kids.map((c, i) =>
        c.ask(
          {
            type: "attach",
            label: (systems[i] as QueueSystem).label,
            url: urls[i] as string,
            keys,
            base: String(pool.base),
            holdMs,
          },
          "attached",
        ),
      ),
    );
    for (const c of kids) c.send({ type: "start" });
    await Promise.all(kids.map((c) => c.next("started", 60_000)));
    const total = tasksPerProcess * kids.length;
    await until(() => kids.reduce((s, c) => s + c.handled, 0) >= total, 60_000, 10);
  } finally {
    reports = await stopAll(pool);
    for (const sys of systems) await sys.close();
    for (const url of urls) await dropDatabase(adminUrl, url);
  }
  return {
    processes: kids.length,
    tasks: tasksPerProcess * kids.length,
    keys,
    holdMs,
    ...countOverlaps(flatten(reports)),
  };
}
