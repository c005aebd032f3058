import type { Logger } from "pino";
import type { ResolvedKind } from "../options.js";
import type { Task } from "../types.js";
import { Completer, type Reporter } from "./completer.js";
import type { LockSession } from "./lock-session.js";
import type { Outcome, Run, Settlement } from "./runs.js";

export interface ReportsDeps {
  kinds: Map<string, ResolvedKind>;
  /** The LISTEN session while it is connected (see Completer). */
  reporter: () => Reporter | undefined;
  /** The current lock session. */
  session: () => LockSession | undefined;
  finish: (run: Run, task: Task, outcome: Outcome) => void;
  /** Something was queued for the lock session's next round trip. */
  kick: () => void;
  logger: Logger;
}

/** What the lock session's next round trip carries about runs (see `take`). */
export interface RoundTripReports {
  /** Runs to report on the lock session: failures, capped kinds, fallbacks. */
  settled: Settlement[];
  /** Runs claimed ahead that started since: their start is recorded. */
  started: Task[];
  /** Keys of runs the LISTEN session reported: their locks are released. */
  unlocks: string[];
}

/**
 * Where each ended run is reported, and what the lock session's next round trip must carry:
 * a success goes to the LISTEN session (Completer), which hands its key back here for the
 * unlock; a failure, a capped kind's run (its slot is a lock of the lock session) or a run the
 * LISTEN session could not take is reported on the lock session.
 */
export class Reports {
  private settled: Settlement[] = [];
  private unlocks: Array<{ session: LockSession; key: string }> = [];
  /** Runs claimed ahead and started whose start is not recorded yet (until then, losing the
   *  session would not count their attempt). */
  private unmarked: Array<{ session: LockSession; task: Task }> = [];
  private readonly completer: Completer;

  constructor(private readonly deps: ReportsDeps) {
    this.completer = new Completer({
      reporter: deps.reporter,
      finish: deps.finish,
      completed: (run) => {
        if (run.session === deps.session() && !run.session.isLost) {
          this.unlocks.push({ session: run.session, key: run.task.key });
          deps.kick();
        }
      },
      own: (s) => {
        this.settled.push(s);
        deps.kick();
      },
      logger: deps.logger,
    });
  }

  /** Something waits for the lock session's next round trip. */
  get pending(): boolean {
    return this.settled.length > 0 || this.unmarked.length > 0 || this.unlocks.length > 0;
  }

  /** A run claimed ahead started: its start goes with the next round trip. */
  started(session: LockSession, tasks: Task[]): void {
    for (const task of tasks) this.unmarked.push({ session, task });
  }

  /** A handler returned (its session still holds its lock): queue its report. */
  ended(run: Run, error: unknown, handOver = false): void {
    // Its report records its start: a mark too would only contend with it for the task rows.
    if (this.unmarked.length > 0)
      this.unmarked = this.unmarked.filter((u) => !run.tasks.includes(u.task));
    const capped = (this.deps.kinds.get(run.task.kind)?.params.maxRunning ?? 0) > 0;
    if (error === undefined && !capped) this.completer.push({ run });
    else this.settled.push(error === undefined ? { run } : { run, error, handOver });
  }

  /** Takes what the next round trip on `session` carries (marks and unlocks of an earlier
   *  session are dropped: its locks are gone). */
  take(session: LockSession): RoundTripReports {
    return {
      settled: this.settled.splice(0),
      started: this.unmarked
        .splice(0)
        .filter((u) => u.session === session)
        .map((u) => u.task),
      unlocks: this.unlocks
        .splice(0)
        .filter((u) => u.session === session)
        .map((u) => u.key),
    };
  }

  /** A round trip failed with a statement error on a live session (nothing it carried was
   *  committed): what it carried goes with the next one. */
  retry(session: LockSession, settled: Settlement[], carried: RoundTripReports): void {
    this.settled.unshift(...settled);
    this.unmarked.unshift(...carried.started.map((task) => ({ session, task })));
    this.unlocks.unshift(...carried.unlocks.map((key) => ({ session, key })));
  }

  /** Resolves once the LISTEN session's reports are committed (or handed back here). */
  async idle(): Promise<void> {
    await this.completer.idle();
  }

  /** Stop: runs left unreported (their session was lost meanwhile). */
  drain(): Settlement[] {
    return this.settled.splice(0);
  }
}
