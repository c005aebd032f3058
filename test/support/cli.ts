import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** The `holdfast` bin as package.json declares it: run exactly as a user would. */
export const bin = fileURLToPath(new URL("../../bin/holdfast.js", import.meta.url));
export const repoRoot = fileURLToPath(new URL("../..", import.meta.url));

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `holdfast <args>` in a child process to completion. */
export async function runCli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  const child = spawn(process.execPath, [bin, ...args], {
    cwd: repoRoot,
    env: { ...process.env, DATABASE_URL: "", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d) => {
    stdout += String(d);
  });
  child.stderr.on("data", (d) => {
    stderr += String(d);
  });
  const code = await new Promise<number | null>((resolve) => child.once("close", resolve));
  return { code, stdout, stderr };
}

export interface LogLine {
  event?: string;
  msg?: string;
  task?: number;
  [k: string]: unknown;
}

export interface CliProcess {
  child: ChildProcess;
  logs: LogLine[];
  /** Resolves with the first log line (past or future) that matches. */
  waitFor(pred: (l: LogLine) => boolean, timeoutMs?: number): Promise<LogLine>;
  /** Resolves with the exit code once the process has exited. */
  exited: Promise<number | null>;
}

/** Starts a long-running `holdfast <args>` (a worker) whose pino JSON logs are collected. */
export function startCli(args: string[], env: Record<string, string> = {}): CliProcess {
  const child = spawn(process.execPath, [bin, ...args], {
    cwd: repoRoot,
    env: { ...process.env, DATABASE_URL: "", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: LogLine[] = [];
  const waiters = new Set<() => void>();
  let stderr = "";
  child.stderr?.on("data", (d) => {
    stderr += String(d);
  });
  if (child.stdout) {
    createInterface({ input: child.stdout }).on("line", (line) => {
      try {
        logs.push(JSON.parse(line) as LogLine);
      } catch {
        return;
      }
      for (const w of waiters) w();
    });
  }
  const exited = new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)));
  const waitFor = (pred: (l: LogLine) => boolean, timeoutMs = 30_000) =>
    new Promise<LogLine>((resolve, reject) => {
      const check = () => {
        const hit = logs.find(pred);
        if (hit) {
          waiters.delete(check);
          clearTimeout(timer);
          resolve(hit);
        }
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`log line not seen in ${timeoutMs} ms; stderr: ${stderr.slice(-2000)}`));
      }, timeoutMs);
      waiters.add(check);
      check();
    });
  return { child, logs, waitFor, exited };
}
