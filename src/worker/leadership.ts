import type { Logger } from "pino";
import type { PreviousHolder } from "./events.js";
import type { LockSession } from "./lock-session.js";
import { type PruneResult, Pruner } from "./pruner.js";
import { ScheduleTicker } from "./schedule-ticker.js";
import type { ServerClock } from "./server-clock.js";
import { Sweeper } from "./sweeper.js";

export interface LeadershipOptions {
  sweepIntervalMs: number;
  rescanIntervalMs: number;
  pruneBatchSize: number;
  pruneIntervalMs: number;
}

export interface LeadershipEvents {
  /** Something is due on the lock session (a sweep, a schedule tick, a prune batch). */
  kick(): void;
  elected(): void;
  takeover(requeued: number, previous: PreviousHolder[]): void;
  quiet(until: Date | null, leader: boolean): void;
  scheduleFired(schedule: string, ticks: Date[], lateMs: number[]): void;
  pruned(result: PruneResult): void;
}

/**
 * The sweep leader's duties and a follower's watch: orphan sweeps (Sweeper), recurring
 * schedules (ScheduleTicker) and pruning (Pruner), each run on the lock session when due. Leadership is a lock of
 * the session it was won on, so it is dropped with that session.
 */
export class Leadership {
  private readonly sweeper: Sweeper;
  private readonly ticker: ScheduleTicker;
  private readonly pruner: Pruner;
  private sweepDue = false;
  private scheduleDue = false;
  private pruneDue = false;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    logger: Logger,
    private readonly opts: LeadershipOptions,
    private readonly on: LeadershipEvents,
    private readonly clock: ServerClock,
  ) {
    // A follower tries to lead once the leader missed two sweeps. A quiet leader still sweeps
    // once per rescan interval: the safety net for a notification it missed, as the rescan is.
    this.sweeper = new Sweeper(
      logger,
      { lateMs: 2 * opts.sweepIntervalMs, maxQuietMs: opts.rescanIntervalMs },
      {
        due: () => this.requestSweep(),
        quiet: (until, leader) => on.quiet(Number.isFinite(until) ? new Date(until) : null, leader),
        elected: () => on.elected(),
      },
    );
    this.ticker = new ScheduleTicker(
      logger,
      clock,
      () => this.requestSchedules(),
      on.scheduleFired,
    );
    this.pruner = new Pruner(
      logger,
      { batchSize: opts.pruneBatchSize, idleMs: opts.pruneIntervalMs },
      () => this.requestPrune(),
      on.pruned,
    );
  }

  get isLeader(): boolean {
    return this.sweeper.isLeader;
  }

  /** Starts the leader's sweep timer (not while quiet: nothing to find) and sweeps once now:
   *  a follower's first sweep is its try to lead. */
  start(): void {
    this.timer = setInterval(() => {
      if (this.sweeper.isLeader && !this.sweeper.isQuiet) this.requestSweep();
    }, this.opts.sweepIntervalMs);
    this.timer.unref();
    this.sweepDue = true;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.ticker.stop();
    this.pruner.stop();
    this.sweeper.clear();
  }

  requestSweep(): void {
    this.sweepDue = true;
    this.on.kick();
  }

  /** Schedules are the leader's: others ignore the request. */
  requestSchedules(): void {
    if (!this.sweeper.isLeader) return;
    this.scheduleDue = true;
    this.on.kick();
  }

  /** Pruning is the leader's: others ignore the request. */
  requestPrune(): void {
    if (!this.sweeper.isLeader) return;
    this.pruneDue = true;
    this.on.kick();
  }

  /** A schedule may have changed (or a change was missed): reread them. A new schedule is a
   *  duty that may be due before any task is enqueued, so it is also a wake: a quiet leader
   *  reads it now, a follower expects a heartbeat within lateMs (and leads if none comes). */
  schedulesChanged(): void {
    this.ticker.invalidate();
    this.requestSchedules();
    this.sweeper.wake();
  }

  /** A task may start (a wake, a claim, a reconnect): the leader must not be quiet. */
  wake(): void {
    this.sweeper.wake();
    this.pruner.activity();
  }

  /** The leader's heartbeat arrived (payload: its quiet deadline, if any). The deadline is
   *  the server's time (ms epoch); the follower's watch runs on the local wall clock, so it is
   *  moved onto it here: a skewed follower would otherwise take over late (behind) or try to
   *  lead too early (ahead). */
  heartbeat(payload: string): void {
    const at = /^\d+$/.test(payload) ? Number(payload) : Number.NaN;
    this.sweeper.heartbeat(
      Number.isFinite(at) ? String(Math.round(this.clock.toLocal(at))) : payload,
    );
  }

  /** The session changed: leadership (a lock of the old session) is gone with it. */
  drop(): void {
    this.sweeper.reset();
    this.ticker.stop();
    this.pruner.stop();
  }

  /** A sweep, or this leader's schedules or pruning, wait for the lock session. */
  due(running: boolean): boolean {
    return (
      this.sweepDue || (running && (this.scheduleDue || this.pruneDue) && this.sweeper.isLeader)
    );
  }

  /** Runs what is due on `session`. */
  async run(session: LockSession, running: boolean): Promise<void> {
    if (this.sweepDue) {
      this.sweepDue = false;
      const result = await this.sweeper.tick(session);
      if (result.elected) {
        this.ticker.invalidate();
        this.scheduleDue = true;
        this.pruner.start();
      }
      if (result.requeued > 0) this.on.takeover(result.requeued, result.previous);
    }
    if (running && this.scheduleDue && this.sweeper.isLeader) {
      this.scheduleDue = false;
      await this.ticker.run(session);
    }
    if (running && this.pruneDue && this.sweeper.isLeader) {
      this.pruneDue = false;
      await this.pruner.run(session);
    }
  }
}
