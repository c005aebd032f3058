import type { ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";

export interface JsonLines<T> {
  /** Every JSON line the child printed on stdout so far (other lines are skipped). */
  lines: T[];
  /** Resolves with the first line (past or future) that matches. */
  waitFor(pred: (line: T) => boolean, timeoutMs?: number): Promise<T>;
}

/** Collects a child process's JSON lines from stdout; `label` names it in timeout errors. */
export function collectJsonLines<T>(child: ChildProcess, label: string): JsonLines<T> {
  const lines: T[] = [];
  const waiters = new Set<() => void>();
  let stderr = "";
  child.stderr?.on("data", (d) => {
    stderr += String(d);
  });
  if (child.stdout) {
    createInterface({ input: child.stdout }).on("line", (line) => {
      try {
        lines.push(JSON.parse(line) as T);
      } catch {
        return;
      }
      for (const w of waiters) w();
    });
  }
  const waitFor = (pred: (line: T) => boolean, timeoutMs = 30_000) =>
    new Promise<T>((resolve, reject) => {
      const check = () => {
        const hit = lines.find(pred);
        if (hit) {
          waiters.delete(check);
          clearTimeout(timer);
          resolve(hit);
        }
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(
          new Error(`${label}: line not seen in ${timeoutMs} ms; stderr: ${stderr.slice(-2000)}`),
        );
      }, timeoutMs);
      waiters.add(check);
      check();
    });
  return { lines, waitFor };
}
