import type { Logger } from "pino";
import { sql } from "../queries/tasks.js";
import type { Task } from "../types.js";
import { isStatementError, type LockSession } from "./lock-session.js";
import type { Outcome, Run, Settlement } from "./runs.js";

/** A connection that can run a statement (the LISTEN session while it is connected). */
export interface Reporter {
  query<R extends Record<string, unknown>>(text: string, values?: unknown[]): Promise<R[]>;
}

export interface CompleterDeps {
  /** The LISTEN session, or undefined while it is down (then the lock session reports). */
  reporter: () => Reporter | undefined;
  finish: (run: Run, task: Task, outcome: Outcome) => void;
  /** The run's completion is committed: its key lock may be released (on its session). */
  completed: (run: Run) => void;
  /** The run must be completed on its lock session itself (a capped kind's slot, or a report
   *  the server refused on both sessions). */
  own: (s: Settlement) => void;
  logger: Logger;
}

/**
 * Reports succeeded runs from the LISTEN session, so the lock session's backend only claims
 * and unlocks: completions (task and key rows, attempt history, a durable commit) run on a
 * second backend at the same time as the next claim. `holdfast.complete_held` accepts a run
 * only while the lock session that claimed it is alive (pid and backend start; where those are
 * hidden, its key lock read from pg_locks), under the run's fence, and leaves the lock held; the
 * worker releases it on the lock session after this commit (settle's unlock_keys). So a key is never free before its run's report is committed,
 * and a report of a run whose lock is gone is rejected, as on the lock session itself.
 * (docs/state-machine.md, "Two sessions".)
 */
export class Completer {
  private queue: Settlement[] = [];
  private flushing: Promise<void> | undefined;

  constructor(private readonly deps: CompleterDeps) {}

  push(s: Settlement): void {
    this.queue.push(s);
    // Runs that end in the same turn of the event loop go in one statement.
    if (!this.flushing) this.flushing = this.flush().finally(() => (this.flushing = undefined));
  }

  /** Resolves once every pushed run is reported (or handed to the lock session). */
  async idle(): Promise<void> {
    while (this.flushing) await this.flushing;
  }

  private async flush(): Promise<void> {
    await new Promise<void>((r) => setImmediate(r));
    while (this.queue.length > 0) {
      const batch = this.queue.splice(0, 1_000);
      const bySession = new Map<LockSession, Settlement[]>();
      for (const s of batch) {
        if (s.run.session.isLost) {
          for (const t of s.run.tasks) this.deps.finish(s.run, t, "lost");
          continue;
        }
        bySession.set(s.run.session, [...(bySession.get(s.run.session) ?? []), s]);
      }
      for (const [session, group] of bySession) await this.report(session, group);
    }
  }

  private async report(session: LockSession, group: Settlement[]): Promise<void> {
    const tasks = group.flatMap((s) => s.run.tasks);
    const values = [tasks.map((t) => t.id), tasks.map((t) => t.fence), await session.pid];
    let rows: Array<{ id: string; status: "rejected" | "own" }>;
    const reporter = this.deps.reporter();
    try {
      if (!reporter) throw new Error("LISTEN session down");
      rows = await reporter.query(sql.completeHeld, values);
    } catch (err) {
      // Committed or not, we cannot tell: report again on the lock session (a success already
      // recorded under the same fence is accepted again). Its failure means the locks are gone.
      if (reporter)
        this.deps.logger.warn(
          { event: "report_moved", err, runs: group.length },
          "holdfast: LISTEN session could not report; reporting on the lock session",
        );
      try {
        rows = await session.query(sql.completeHeld, values);
      } catch (lockErr) {
        if (!session.isLost && isStatementError(lockErr)) {
          // The server refused the statement, the locks are still held: the lock session's
          // round trip reports these runs (settle), retried there until it goes through.
          this.deps.logger.warn(
            { event: "report_statement_error", err: lockErr, runs: group.length },
            "holdfast: a report failed on a live session; it stays queued for the lock session",
          );
          for (const s of group) this.deps.own(s);
          return;
        }
        session.markLost("lock session query failed", lockErr);
        for (const s of group) for (const t of s.run.tasks) this.deps.finish(s.run, t, "lost");
        return;
      }
    }
    const status = new Map(rows.map((r) => [Number(r.id), r.status]));
    for (const s of group) {
      if (s.run.tasks.some((t) => status.get(t.id) === "own")) {
        this.deps.own(s);
        continue;
      }
      for (const t of s.run.tasks) {
        const rejected = status.get(t.id) === "rejected";
        // Rejected because its lock is gone with the session: the run was lost.
        this.deps.finish(s.run, t, !rejected ? "succeeded" : session.isLost ? "lost" : "rejected");
      }
      this.deps.completed(s.run);
    }
  }
}
