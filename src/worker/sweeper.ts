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
 * so it passes to another worker when the leader's session ends. Only the leader runs
 * statements on a timer: each sweep NOTIFYs `holdfast_leader`, which reaches every worker's
 * LISTEN session at no transaction of theirs. A follower tries to lead only when that
 * heartbeat is late (`lateMs`), so an idle fleet costs the leader's sweeps plus nothing per
 * process, and a dead leader is replaced within `lateMs` of its last sweep.
 */
export class Sweeper {
  private leader = false;
  private timer: NodeJS.Timeout | undefined;

  /**
   * @param lateMs a follower tries to lead when no heartbeat came for this long (plus jitter, so
   *   a fleet does not try all at once).
   * @param due called when this worker should tick: a follower's heartbeat is late.
   */
  constructor(
    private readonly logger: Logger,
    private readonly lateMs: number,
    private readonly due: () => void,
  ) {}

  /** This worker leads: it sweeps orphans and fires recurring schedules. */
  get isLeader(): boolean {
    return this.leader;
  }

  /** The session changed: leadership (a lock of the old session) is gone with it. */
  reset(): void {
    this.leader = false;
  }

  /** The leader swept (its notification arrived): followers wait for the next one. */
  heartbeat(): void {
    if (!this.leader) this.watch();
  }

  /** Stops the follower's watch (worker stopping). */
  clear(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** A follower's deadline for the next heartbeat; re-armed by each heartbeat and failed try. */
  private watch(): void {
    this.clear();
    const jitter = Math.random() * (this.lateMs / 4);
    this.timer = setTimeout(this.due, this.lateMs + jitter);
    this.timer.unref();
  }

  async tick(session: LockSession): Promise<SweepResult> {
    let elected = false;
    if (!this.leader) {
      const [row] = await session.query<{ leader: boolean }>(sql.tryLead);
      if (!row?.leader) {
        this.watch(); // the leader may be alive but slow, or our LISTEN session down: try again
        return { elected, requeued: 0, previous: [] };
      }
      this.clear();
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
