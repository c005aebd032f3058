import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { collectJsonLines } from "./json-lines.js";

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
  const { lines: logs, waitFor } = collectJsonLines<LogLine>(child, `holdfast ${args[0]}`);
  const exited = new Promise<number | null>((resolve) => child.once("exit", (c) => resolve(c)));
  return { child, logs, waitFor, exited };
}
