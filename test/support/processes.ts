import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type pg from "pg";

export interface WorkerEvent {
  event: string;
  worker: string;
  pid: number;
  at: number;
  [k: string]: unknown;
}

export interface WorkerProcess {
  name: string;
  child: ChildProcess;
  events: WorkerEvent[];
  /** Resolves with the first event (past or future) that matches. */
  waitFor(pred: (e: WorkerEvent) => boolean, timeoutMs?: number): Promise<WorkerEvent>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

const fixture = fileURLToPath(new URL("../fixtures/worker-process.ts", import.meta.url));

/** Starts test/fixtures/worker-process.ts in a child process and waits until it is ready. */
export async function startWorkerProcess(
  url: string,
  name: string,
  env: Record<string, string> = {},
): Promise<WorkerProcess> {
  const child = spawn(process.execPath, ["--import", "tsx", fixture], {
    env: { ...process.env, DATABASE_URL: url, HF_NAME: name, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const events: WorkerEvent[] = [];
  const waiters = new Set<() => void>();
  let stderr = "";
  child.stderr?.on("data", (d) => {
    stderr += String(d);
  });
  createInterface({ input: child.stdout! }).on("line", (line) => {
    try {
      events.push(JSON.parse(line) as WorkerEvent);
    } catch {
      return;
    }
    for (const w of waiters) w();
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const waitFor = (pred: (e: WorkerEvent) => boolean, timeoutMs = 30_000) =>
    new Promise<WorkerEvent>((resolve, reject) => {
      const check = () => {
        const hit = events.find(pred);
        if (hit) {
          waiters.delete(check);
          clearTimeout(timer);
          resolve(hit);
        }
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(
          new Error(
            `worker ${name}: event not seen in ${timeoutMs} ms; stderr: ${stderr.slice(-2000)}`,
          ),
        );
      }, timeoutMs);
      waiters.add(check);
      check();
    });
  const proc: WorkerProcess = {
    name,
    child,
    events,
    waitFor,
    kill: async (signal = "SIGKILL") => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
  };
  await waitFor((e) => e.event === "ready", 60_000);
  return proc;
}

export interface RunRow {
  task_id: number;
  key: string;
  attempt: number;
  fence: string;
  worker: string;
  started_at: Date;
  ended_at: Date | null;
}

export async function createRunsTable(pool: pg.Pool): Promise<void> {
  await pool.query(`create table if not exists runs (
    task_id bigint, key text, attempt int, fence bigint, worker text,
    started_at timestamptz, ended_at timestamptz)`);
}

/** Pairs of runs of one key whose intervals overlap (a run without an end counts as open until `openUntil`). */
export function overlaps(
  runs: RunRow[],
  openUntil: (r: RunRow) => number = () => Number.POSITIVE_INFINITY,
): Array<[RunRow, RunRow]> {
  const byKey = new Map<string, RunRow[]>();
  for (const r of runs) byKey.set(r.key, [...(byKey.get(r.key) ?? []), r]);
  const bad: Array<[RunRow, RunRow]> = [];
  for (const list of byKey.values()) {
    list.sort((a, b) => a.started_at.getTime() - b.started_at.getTime());
    let latest: RunRow | undefined; // the run that ends last among those started so far
    const end = (r: RunRow) => (r.ended_at ? r.ended_at.getTime() : openUntil(r));
    for (const cur of list) {
      if (latest && cur.started_at.getTime() < end(latest)) bad.push([latest, cur]);
      if (!latest || end(cur) > end(latest)) latest = cur;
    }
  }
  return bad;
}
