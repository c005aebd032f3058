import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

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
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (line) => {
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
