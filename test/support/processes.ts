import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll } from "vitest";
import { freshDatabase, type TestDatabase } from "./db.js";
import { collectJsonLines } from "./json-lines.js";
import { createRunsTable } from "./runs.js";

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
  return await readyWorker(child, name);
}

/** A started worker child process (JSON lines on stdout), once it says it is ready; killed
 *  if it never does. */
export async function readyWorker(child: ChildProcess, name: string): Promise<WorkerProcess> {
  const { lines: events, waitFor } = collectJsonLines<WorkerEvent>(child, `worker ${name}`);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
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
  try {
    await waitFor((e) => e.event === "ready", 120_000);
  } catch (err) {
    await proc.kill(); // a child that never got ready must not outlive its caller
    throw err;
  }
  return proc;
}

/**
 * Registers hooks for a fresh database with a `runs` table and for killing, at the end, every
 * worker process started through `start` (the fixture, on that database).
 */
export function useWorkerProcesses(): {
  readonly db: TestDatabase;
  start(name: string, env?: Record<string, string>): Promise<WorkerProcess>;
} {
  let db: TestDatabase | undefined;
  const procs: WorkerProcess[] = [];
  beforeAll(async () => {
    db = await freshDatabase();
    await createRunsTable(db.pool);
  });
  afterAll(async () => {
    await Promise.all(procs.map((p) => p.kill()));
    await db?.drop();
  });
  const ready = (): TestDatabase => {
    if (!db) throw new Error("useWorkerProcesses: read .db inside a test or hook");
    return db;
  };
  return {
    get db() {
      return ready();
    },
    start: async (name, env = {}) => {
      const p = await startWorkerProcess(ready().url, name, env);
      procs.push(p);
      return p;
    },
  };
}
