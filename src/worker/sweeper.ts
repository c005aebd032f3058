import type { Logger } from "pino";
import { sql } from "../queries/tasks.js";
import type { PreviousHolder } from "./events.js";
import { maxTimerMs } from "./limits-of-node.js";
import type { LockSession } from "./lock-session.js";

export interface SweepResult {
  /** This tick made the worker the sweeper. */
  elected: boolean;
  requeued: number;
  previous: PreviousHolder[];
}

export interface SweeperTiming {
  /** A follower tries to lead when no heartbeat came for this long (plus jitter, so a fleet
   *  does not try all at once). */
  lateMs: number;
  /** The quiet leader still sweeps this often: the safety net for a notification it missed. */
  maxQuietMs: number;
}

export interface SweeperCallbacks {
  /** This worker should tick: it leads and quiet ended, or, a follower, the heartbeat is late. */
  due(): void;
  /** This worker stopped expecting sweeps until `until` (ms epoch, Infinity: until woken):
   *  the leader skips its timer sweeps, a follower expects no heartbeat. */
  quiet(until: number, leader: boolean): void;
  /** Won the election: called before the first sweep, so whatever that sweep sets off (a
   *  takeover by another worker) comes after the news that this worker leads. */
  elected(): void;
}

/** The heartbeat's payload: the leader's quiet deadline (ms epoch), or undefined (not quiet). */
function parseQuiet(payload: string): number | undefined {
  if (payload === "infinity") return Number.POSITIVE_INFINITY;
  const at = payload === "" ? Number.NaN : Number(payload);
  return Number.isFinite(at) ? at : undefined;
}

/**
 * Orphan sweeping by one elected worker: leadership is an advisory lock on the lock session,
 * so it passes to another worker when the leader's session ends. Only the leader runs
 * statements on a timer: each sweep NOTIFYs `holdfast_leader`, which reaches every worker's
 * LISTEN session at no transaction of theirs. A follower tries to lead only when that
 * heartbeat is late (`lateMs`), so an idle fleet costs the leader's sweeps plus nothing per
 * process, and a dead leader is replaced within `lateMs` of its last sweep.
 *
 * Quiet: an idle system has nothing a sweep could find. A sweep also returns
 * holdfast.quiet_until(): null while a task runs or a head is due, else when the next head
 * becomes due. No task can start before then without a NOTIFY on `holdfast` first, so the
 * leader skips its timer sweeps until that time or until `wake()` (a `holdfast` notification
 * of any kind, a claim that got tasks, a LISTEN reconnect), and sweeps at once when woken. The
 * heartbeat carries the deadline, so followers expect no heartbeat before it either, unless
 * woken: then they expect one within `lateMs` as usual, and a leader that died while quiet is
 * replaced as soon as there is work.
 *
 * Races. A sweep's snapshot may predate a commit whose NOTIFY reaches us before the sweep's
 * answer or heartbeat. So a quiet answer counts only if no wake came since the statement was
 * sent; the leader goes quiet after two such sweeps in a row; and a follower trusts a quiet
 * heartbeat only if another heartbeat came between the last wake and it (NOTIFYs arrive in
 * commit order, and the leader's next sweep starts after its previous one committed, so that
 * heartbeat's snapshot saw what the wake announced). The leader's two sweeps after a wake give
 * followers that second heartbeat.
 */
export class Sweeper {
  private leader = false;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  /** When the follower's watch fires (ms epoch); Infinity: no heartbeat expected. */
  private deadline = Number.POSITIVE_INFINITY;
  /** The follower trusts a quiet deadline (reported once per quiet spell). */
  private followerQuiet = false;
  /** Bumped by every wake: a statement sent before one may have missed what it announced. */
  private wakes = 0;
  /** Heartbeats received since the last wake (follower). */
  private heard = 0;
  /** Quiet sweeps in a row, all sent after the last wake (leader). */
  private quietSweeps = 0;
  /** The leader skips its timer sweeps until then (performance.now(), immune to wall-clock
   *  steps); 0: not quiet. */
  private quietUntil = 0;
  /** Ends the leader's quiet at its deadline: the duty that falls due then (a delayed head, a
   *  schedule tick) is met on time, and the heartbeat that follows reaches followers before
   *  their watch expires. */
  private quietTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly logger: Logger,
    private readonly timing: SweeperTiming,
    private readonly on: SweeperCallbacks,
  ) {}

  /** This worker leads: it sweeps orphans and fires recurring schedules. */
  get isLeader(): boolean {
    return this.leader;
  }

  /** The leader may skip its timer sweep: nothing can need one before quiet_until. */
  get isQuiet(): boolean {
    return this.leader && performance.now() < this.quietUntil;
  }

  /** The session changed: leadership (a lock of the old session) is gone with it. */
  reset(): void {
    this.leader = false;
    this.quietSweeps = 0;
    this.endQuiet();
  }

  /** The leader swept (its notification arrived, payload: its quiet deadline): followers wait
   *  for the next one, or, when it is quiet and trusted, until its deadline. */
  heartbeat(payload: string): void {
    if (this.leader || this.stopped) return;
    this.heard++;
    const until = parseQuiet(payload);
    if (until !== undefined && this.heard >= 2) this.watchQuiet(until);
    else this.watch();
  }

  /**
   * Something may start without a sweep knowing: a `holdfast` notification (any kind), a claim
   * by this worker that got tasks, a LISTEN reconnect (notifications may have been missed). A
   * quiet leader sweeps now; a follower expects a heartbeat within lateMs (never later than
   * it already did).
   */
  wake(): void {
    if (this.stopped) return;
    this.wakes++;
    this.heard = 0;
    this.quietSweeps = 0;
    if (this.leader) {
      if (this.quietUntil === 0) return; // sweeping on its timer anyway
      this.endQuiet();
      this.on.due();
    } else if (this.deadline > Date.now() + 1.25 * this.timing.lateMs) {
      this.watch();
    }
  }

  /** Stops the follower's watch for good (worker stopping). */
  clear(): void {
    this.stopped = true;
    this.disarm();
    this.endQuiet();
  }

  private endQuiet(): void {
    this.quietUntil = 0;
    if (this.quietTimer) clearTimeout(this.quietTimer);
    this.quietTimer = undefined;
  }

  private disarm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.deadline = Number.POSITIVE_INFINITY;
  }

  /** A follower's deadline for the next heartbeat; re-armed by each heartbeat and failed try. */
  private watch(): void {
    this.followerQuiet = false;
    this.arm(Date.now() + this.timing.lateMs + Math.random() * (this.timing.lateMs / 4));
  }

  /** The leader is quiet until `until` (ms epoch): a duty falls due then, and the leader's
   *  heartbeat follows within milliseconds (its quiet timer, or the tick's NOTIFY). Its absence
   *  is noticed after half of lateMs (plus jitter), so a dead quiet leader is replaced well
   *  within a second of the duty's time. */
  private watchQuiet(until: number): void {
    const late = this.timing.lateMs / 2 + Math.random() * (this.timing.lateMs / 4);
    this.arm(until + late);
    if (!this.followerQuiet) {
      this.followerQuiet = true;
      this.logger.debug({ event: "leader_quiet", until }, "holdfast: sweep leader is quiet");
      this.on.quiet(until, false);
    }
  }

  private arm(at: number): void {
    this.disarm();
    if (this.stopped) return;
    this.deadline = at;
    if (at === Number.POSITIVE_INFINITY) return;
    this.timer = setTimeout(this.on.due, Math.min(maxTimerMs, Math.max(0, at - Date.now())));
    this.timer.unref();
  }

  async tick(session: LockSession): Promise<SweepResult> {
    const wakes = this.wakes;
    let elected = false;
    if (!this.leader) {
      const [row] = await session.query<{ leader: boolean; quiet_ms: number | null }>(sql.tryLead);
      if (!row?.leader) {
        // The leader may be alive but slow, or our LISTEN session down: try again after
        // lateMs. Unless the system is quiet (as our own snapshot, taken after every wake we
        // had, shows): then a live leader is quiet too, and a dead one has nothing to do.
        const quietMs = row?.quiet_ms ?? null;
        if (quietMs !== null && quietMs > 0 && wakes === this.wakes) {
          this.watchQuiet(Date.now() + quietMs);
        } else {
          this.watch();
        }
        return { elected, requeued: 0, previous: [] };
      }
      this.disarm();
      this.followerQuiet = false;
      this.leader = elected = true;
    }
    if (elected) {
      this.logger.info({ event: "leader" }, "holdfast: elected to sweep orphaned tasks");
      this.on.elected();
    }
    const [row] = await session.query<{
      requeued: number;
      previous: PreviousHolder[] | null;
      quiet_ms: number | null;
    }>(sql.sweep);
    const requeued = row?.requeued ?? 0;
    const previous = row?.previous ?? [];
    if (requeued > 0)
      this.logger.warn(
        { event: "takeover", requeued, previous },
        "holdfast: requeued tasks whose holder died",
      );
    this.afterSweep(row?.quiet_ms ?? null, wakes);
    return { elected, requeued, previous };
  }

  /** Quiet after two quiet sweeps in a row sent after the last wake (see the class comment). */
  private afterSweep(quietMs: number | null, wakes: number): void {
    if (quietMs === null || quietMs <= 0 || wakes !== this.wakes) {
      this.quietSweeps = 0;
      this.endQuiet();
      return;
    }
    this.quietSweeps++;
    if (this.quietSweeps < 2) return;
    const wasQuiet = this.quietUntil !== 0;
    const quietFor = Math.min(quietMs, this.timing.maxQuietMs);
    this.quietUntil = performance.now() + quietFor;
    if (this.quietTimer) clearTimeout(this.quietTimer);
    this.quietTimer = setTimeout(
      () => {
        this.quietTimer = undefined;
        this.on.due();
      },
      Math.min(quietFor, maxTimerMs),
    );
    this.quietTimer.unref();
    if (!wasQuiet) {
      const until = Date.now() + quietMs;
      this.logger.debug({ event: "quiet", until }, "holdfast: quiet, sweeps paused");
      this.on.quiet(until, true);
    }
  }
}
