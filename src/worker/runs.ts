import type { Logger } from "pino";
import { TaskCancelledError } from "../errors.js";
import { sql, type TaskRow, toTask } from "../queries/tasks.js";
import type { Task } from "../types.js";
import type { LockSession } from "./lock-session.js";

export type Outcome = "succeeded" | "failed" | "cancelled" | "lost" | "rejected";

/** One handler call: a single task, or the tasks of one key claimed together (a batch). */
export interface Run {
  task: Task;
  tasks: Task[];
  controller: AbortController;
  session: LockSession;
  logger: Logger;
}

export interface Settlement {
  run: Run;
  error?: unknown;
}

/** Groups claimed rows into runs: one key's tasks share the claim's fence, in the key's order. */
export function groupRuns(rows: TaskRow[]): Task[][] {
  const runs = new Map<string, Task[]>();
  for (const row of rows) {
    const task = toTask(row);
    const id = `${task.fence}:${task.key}`;
    runs.set(id, [...(runs.get(id) ?? []), task]);
  }
  return [...runs.values()];
}

type Finish = (run: Run, task: Task, outcome: Outcome, error?: unknown) => void;

/** Reports runs settled on `session`: successes in one call, each failed task one by one. */
export async function reportRuns(
  session: LockSession,
  live: Settlement[],
  finish: Finish,
): Promise<void> {
  const succeeded = live.filter((s) => s.error === undefined);
  const ok = succeeded.flatMap((s) => s.run.tasks);
  if (ok.length > 0) {
    const [row] = await session.query<{ rejected: string[] | null }>(
      "select array(select holdfast.complete_many($1::bigint[], $2::bigint[])) as rejected",
      [ok.map((t) => t.id), ok.map((t) => t.fence)],
    );
    const rejected = new Set((row?.rejected ?? []).map(Number));
    for (const s of succeeded) {
      for (const t of s.run.tasks) finish(s.run, t, rejected.has(t.id) ? "rejected" : "succeeded");
    }
  }
  for (const s of live.filter((x) => x.error !== undefined)) {
    const err = s.error instanceof Error ? s.error : new Error(String(s.error));
    const cancelled = s.run.controller.signal.reason instanceof TaskCancelledError;
    for (const t of s.run.tasks) {
      const [row] = await session.query<{ ok: boolean }>(sql.fail, [
        t.id,
        t.fence,
        `${err.name}: ${err.message}`,
        null,
        err.stack ?? null,
      ]);
      // A cancel notice follows a committed cancel request, so fail() recorded 'cancelled'.
      const outcome = !row?.ok ? "rejected" : cancelled ? "cancelled" : "failed";
      finish(s.run, t, outcome, s.error);
    }
  }
}

export function logOutcome(run: Run, task: Task, outcome: Outcome, error?: unknown): void {
  const log = run.tasks.length > 1 ? run.logger.child({ task: task.id }) : run.logger;
  if (outcome === "succeeded") log.info({ event: "task_succeeded" }, "holdfast: task succeeded");
  else if (outcome === "cancelled")
    log.info({ event: "task_cancelled" }, "holdfast: task cancelled");
  else if (outcome === "failed") {
    log.warn({ event: "task_failed", err: error }, "holdfast: task failed");
    // What fail() did with it, as the SQL decides from the attempts left.
    if (task.attempt >= task.maxAttempts)
      log.error({ event: "task_dead_lettered" }, "holdfast: attempts used up; dead-lettered");
    else log.info({ event: "task_retry_scheduled" }, "holdfast: retry scheduled after backoff");
  } else if (outcome === "rejected")
    log.warn(
      { event: "report_rejected" },
      "holdfast: report rejected: a newer claim of the key exists",
    );
  else
    log.warn(
      { event: "task_lost", err: error },
      "holdfast: lock lost during the run; outcome not reported",
    );
}
