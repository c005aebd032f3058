import type { Logger } from "pino";
import { sql } from "../queries/tasks.js";
import type { PreviousHolder } from "./events.js";
import type { LockSession } from "./lock-session.js";

export interface SweepResult {
  /** This tick made the worker the sweeper. */
  elected: boolean;
  requeued: number;
  previous: PreviousHolder[];
}

/**
 * Orphan sweeping by one elected worker: leadership is an advisory lock on the lock session,
 * so it passes to another worker when the leader's session ends. Non-leaders only try to lead.
 */
export class Sweeper {
  private leader = false;

  constructor(private readonly logger: Logger) {}

  /** This worker leads: it sweeps orphans and fires recurring schedules. */
  get isLeader(): boolean {
    return this.leader;
  }

  /** The session changed: leadership (a lock of the old session) is gone with it. */
  reset(): void {
    this.leader = false;
  }

  async tick(session: LockSession): Promise<SweepResult> {
    let elected = false;
    if (!this.leader) {
      const [row] = await session.query<{ leader: boolean }>(sql.tryLead);
      if (!row?.leader) return { elected, requeued: 0, previous: [] };
      this.leader = elected = true;
    }
    if (elected) this.logger.info({ event: "leader" }, "holdfast: elected to sweep orphaned tasks");
    const [row] = await session.query<{ requeued: number; previous: PreviousHolder[] | null }>(
      sql.sweep,
    );
    const requeued = row?.requeued ?? 0;
    const previous = row?.previous ?? [];
    if (requeued > 0)
      this.logger.warn(
        { event: "takeover", requeued, previous },
        "holdfast: requeued tasks whose holder died",
      );
    return { elected, requeued, previous };
  }
}
