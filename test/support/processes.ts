import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { collectJsonLines } from "./json-lines.js";

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
  await waitFor((e) => e.event === "ready", 60_000);
  return proc;
}
