import { EventEmitter } from "node:events";
import type pg from "pg";
import type { Logger } from "pino";
import { HoldfastError, LockLostError, ShutdownError, TaskCancelledError } from "../errors.js";
import { declareKinds } from "../kinds.js";
import type { ResolvedWorkerOptions } from "../options.js";
import { requireSessions } from "../pooler.js";
import type { TaskRow } from "../queries/tasks.js";
import { Tracing } from "../tracing.js";
import type { Task } from "../types.js";
import { retryWithBackoff } from "./backoff.js";
import type { WorkerEvents } from "./events.js";
import { Leadership } from "./leadership.js";
import { LimitWaits } from "./limit-waits.js";
import { sessionName } from "./limits-of-node.js";
import { Listener } from "./listener.js";
import { isStatementError, LockSession } from "./lock-session.js";
import { Reports, type RoundTripReports } from "./reports.js";
import { PrefetchQueue, RunTable } from "./run-table.js";
import {
  callHandler,
  groupRuns,
  logOutcome,
  newRun,
  type Outcome,
  type Run,
  releaseUnstarted,
  reportFailures,
  type Settlement,
  settle,
} from "./runs.js";
import { ServerClock } from "./server-clock.js";
import { WakeTimer } from "./wake-timer.js";

/** The longest wait between round trips while the server keeps refusing a statement. */
const statementRetryMaxMs = 5_000;

export interface WorkerDeps {
  pool: pg.Pool;
  connection: pg.ClientConfig;
  logger: Logger;
  /** Spans of runs (Holdfast's); default: none. */
  tracing?: Tracing;
}

/**
 * Runs handlers with at most `concurrency` tasks at once. One lock session holds the locks of
 * all running tasks; one LISTEN session wakes the worker and reports its successes (Reports).
 * All lock-session traffic goes through `pump`, one call at a time, so reports and claims
 * batch naturally. (What is left here, past 400 lines, is that loop and the lifecycle of runs
 * and sessions it drives: they share one state. Leadership, reports, prefetch bookkeeping and
 * the listener live in their own modules.)
 */
export class Worker extends EventEmitter<WorkerEvents> {
  readonly name: string;
  private readonly kinds: string[];
  private readonly logger: Logger;
  private session: LockSession | undefined;
  private listener: Listener | undefined;
  private readonly runs = new RunTable();
  private readonly prefetched = new PrefetchQueue();
  private readonly maxBatch: number;
  private readonly reports: Reports;
  private wantClaim = false;
  private kickScheduled = false;
  private pumping: Promise<void> | undefined;
  private state: "new" | "starting" | "running" | "stopping" | "stopped" = "new";
  private timers: NodeJS.Timeout[] = [];
  private readonly wakeTimer: WakeTimer;
  private readonly leadership: Leadership;
  /** The database's clock: every deadline this worker waits for is read on it. */
  private readonly clock: ServerClock;
  private readonly limitWaits: LimitWaits;
  private reconnecting = false;
  /** The delay before the next round trip after a refused statement (0: none failed). */
  private statementRetryMs = 0;
  private readonly tracing: Tracing;

  constructor(
    private readonly deps: WorkerDeps,
    private readonly opts: ResolvedWorkerOptions,
  ) {
    super();
    this.name = opts.name;
    this.tracing = deps.tracing ?? new Tracing(false);
    this.kinds = [...opts.kinds.keys()];
    this.maxBatch = Math.max(...[...opts.kinds.values()].map((k) => k.batchMax));
    this.logger = deps.logger.child({ worker: opts.name });
    this.clock = new ServerClock(this.logger, (offsetMs, rttMs) =>
      this.emit("clock", { offsetMs, rttMs }),
    );
    this.leadership = new Leadership(
      this.logger,
      opts,
      {
        kick: () => this.kick(),
        elected: () => this.emit("leader"),
        takeover: (requeued, previous) => {
          this.emit("takeover", { requeued, previous });
          this.wantClaim = true;
        },
        quiet: (until, leader) => this.emit("quiet", { until, leader }),
        scheduleFired: (schedule, ticks, lateMs) =>
          this.emit("schedule:fired", { schedule, ticks, lateMs }),
        pruned: (result) => this.emit("pruned", result),
      },
      this.clock,
    );
    this.limitWaits = new LimitWaits(deps.pool, this.kinds, this.logger);
    this.wakeTimer = new WakeTimer(this.kinds, opts.rescanIntervalMs, this.clock, () =>
      this.requestClaim(),
    );
    this.reports = new Reports({
      kinds: opts.kinds,
      reporter: () => this.listener?.reporter(),
      session: () => this.session,
      finish: (run, task, outcome) => this.finish(run, task, outcome),
      kick: () => this.kick(),
      logger: this.logger,
    });
    // An unhandled 'error' event would crash the host process; errors are logged already.
    this.on("error", () => {});
  }

  /** Tasks running now. */
  get activeCount(): number {
    return this.runs.size;
  }

  /** The database's clock minus this host's (ms; positive: this host is behind), as last
   *  measured (at start, on each reconnect, then every minute); null before the start. */
  get clockOffsetMs(): number | null {
    return this.clock.offsetMs;
  }

  async start(): Promise<void> {
    if (this.state !== "new")
      throw new HoldfastError("HF_STATE", `holdfast: worker already ${this.state}`);
    this.state = "starting";
    try {
      // Before anything else (no lock, no LISTEN, no prepared statement): a transaction or
      // statement pooler would strand them on a backend another client gets next.
      await requireSessions(this.deps.connection, "the worker's session connection");
      await declareKinds(this.deps.pool, this.opts.kinds.values(), this.logger);
      await this.limitWaits.start();
      // LISTEN before the first scan, so a task enqueued in between still wakes us.
      this.listener = new Listener(
        this.deps.connection,
        sessionName("listen", this.name),
        {
          wake: (kind) => {
            // The claim first: woken the other way round, a quiet leader's pump would send its
            // sweep before the claim and the task would wait for that round trip.
            if (this.opts.kinds.has(kind)) this.requestClaim();
            // Any kind: a task that may start ends the sweep leader's quiet (see Sweeper).
            this.leadership.wake();
          },
          cancel: (id) => this.cancelRunning(id),
          reconnected: () => {
            // An enqueue or a schedule change may have been missed: reread the schedules
            // and end the sweep leader's quiet (schedulesChanged is also a wake).
            this.leadership.schedulesChanged();
            this.requestClaim();
          },
          schedulesChanged: () => this.leadership.schedulesChanged(),
          leader: (quietUntil) => this.leadership.heartbeat(quietUntil),
        },
        this.logger,
        undefined,
        this.opts.lockSession,
        this.clock,
      );
      await this.listener.start();
      await this.openSession();
    } catch (err) {
      this.state = "stopped";
      await this.listener?.close();
      throw err;
    }
    this.state = "running";
    this.timers.push(setInterval(() => this.requestClaim(), this.opts.rescanIntervalMs));
    for (const t of this.timers) t.unref();
    this.leadership.start();
    this.logger.info(
      { event: "worker_started", kinds: this.kinds, concurrency: this.opts.concurrency },
      "holdfast: worker started",
    );
    this.emit("ready");
    this.requestClaim();
  }

  /**
   * Stops claiming, waits for running handlers (aborting their signal with ShutdownError after
   * shutdownTimeoutMs, then still waiting: a lock is never released under a running handler),
   * reports their outcome, then closes both sessions.
   */
  async stop(): Promise<void> {
    if (this.state === "stopped" || this.state === "stopping") return;
    if (this.state === "new") {
      this.state = "stopped";
      return;
    }
    this.state = "stopping";
    for (const t of this.timers) clearInterval(t);
    this.wakeTimer.clear();
    this.leadership.stop();
    this.logger.info(
      { event: "worker_stopping", running: this.runs.live },
      "holdfast: worker stopping",
    );
    await this.releasePrefetched();
    const drained = this.waitIdle();
    const timeout = new Promise<"timeout">((r) => {
      const t = setTimeout(() => r("timeout"), this.opts.shutdownTimeoutMs);
      t.unref();
      void drained.then(() => clearTimeout(t));
    });
    if ((await Promise.race([drained, timeout])) === "timeout") {
      this.logger.warn(
        { event: "shutdown_timeout", running: this.runs.live },
        "holdfast: aborting handlers still running",
      );
      this.shutdownNow(new ShutdownError("holdfast: worker shutdown timeout elapsed"));
      await drained;
    }
    await this.reports.idle(); // reports commit before the session (and its locks) ends
    this.kick();
    await this.pumping;
    await this.releasePrefetched(); // claimed by a claim that was in flight
    // Left unreported only when the lock session was lost meanwhile: those locks are gone.
    for (const s of this.reports.drain()) {
      for (const t of s.run.tasks) this.finish(s.run, t, "lost", s.error);
    }
    await this.listener?.close();
    await this.session?.close();
    this.state = "stopped";
    this.logger.info({ event: "worker_stopped" }, "holdfast: worker stopped");
  }

  /**
   * Aborts every running handler's signal now with a ShutdownError (as stop() does once its
   * timeout elapses; the CLI on a second SIGTERM). A run that checkpointed since it started
   * and then ends (returns or throws) goes back to pending in its place without counting an
   * attempt, and another worker is told at once; a run without a checkpoint ends as a failed
   * attempt. Call it while stop() waits; stop() still waits for the handlers to return.
   */
  shutdownNow(reason = new ShutdownError("holdfast: worker shutdown")): void {
    for (const run of this.runs.runs()) {
      if (!run.controller.signal.aborted) run.controller.abort(reason);
    }
  }

  private async waitIdle(): Promise<void> {
    while (this.activeCount > 0) {
      await new Promise<void>((resolve) => this.once("task:end", () => resolve()));
    }
  }

  private requestClaim(): void {
    this.wantClaim = true;
    this.kick();
  }

  /** Starts the pump unless it is running; a running pump re-reads every flag before it stops. */
  private kick(): void {
    if (this.pumping) return;
    this.pumping = this.pump().finally(() => {
      this.pumping = undefined;
      if (this.hasWork()) this.kick();
    });
  }

  private hasWork(): boolean {
    if (!this.session || this.session.isLost || this.state === "stopped") return false;
    return (
      this.reports.pending ||
      this.leadership.due(this.state === "running") ||
      (this.canClaim() && this.wantClaim)
    );
  }

  private canClaim(): boolean {
    const held = this.activeCount + this.prefetched.size;
    const room = this.opts.concurrency + this.opts.prefetch - held;
    // While prefetched runs wait here, refill once half the prefetch is used: a claim costs
    // about the same for one key as for fifty, and the slots have work meanwhile.
    const min = this.prefetched.size > 0 ? Math.ceil(this.opts.prefetch / 2) : 1;
    return this.state === "running" && room >= min;
  }

  private async pump(): Promise<void> {
    while (this.hasWork()) {
      const session = this.session;
      if (!session) return;
      try {
        const claim = this.canClaim() && this.wantClaim;
        if (claim) this.wantClaim = false;
        if (claim || this.reports.pending) {
          await this.reportAndClaim(session, this.reports.take(session), claim);
        }
        await this.leadership.run(session, this.state === "running");
        this.statementRetryMs = 0;
      } catch (err) {
        if (err instanceof LockLostError || session.isLost) {
          session.markLost("lock session failed", err);
          return;
        }
        this.emit("error", err);
        if (isStatementError(err)) {
          await this.statementFailed(err);
          continue;
        }
        this.logger.error({ event: "pump_error", err }, "holdfast: lock session query failed");
        session.markLost("lock session query failed", err);
        return;
      }
    }
  }

  /**
   * The server refused a statement on a live lock session (a function replaced by a migration,
   * a deadlock, a cancel): every lock is still held, so nothing is aborted. What the round
   * trip carried is queued again (reportAndClaim); the next one waits a delay that doubles up
   * to statementRetryMaxMs, so a statement that keeps failing does not spin.
   */
  private async statementFailed(err: unknown): Promise<void> {
    this.wantClaim = true;
    this.statementRetryMs = Math.min(Math.max(100, this.statementRetryMs * 2), statementRetryMaxMs);
    this.logger.warn(
      { event: "statement_error", err, retryInMs: this.statementRetryMs },
      "holdfast: the server refused a lock session statement; retrying, the locks are still held",
    );
    await new Promise((r) => setTimeout(r, this.statementRetryMs));
  }

  /**
   * Reports finished runs and claims up to one key per free slot (a batch kind's key brings up
   * to batch.max tasks) in as few round trips as it can: failures one by one, then successes
   * and the claim together (holdfast.settle), one commit. Runs of a lost session end as lost.
   */
  private async reportAndClaim(session: LockSession, reports: RoundTripReports, claim: boolean) {
    const batch = reports.settled;
    const unconfirmed = new Map<Task, Settlement>();
    for (const s of batch) for (const t of s.run.tasks) unconfirmed.set(t, s);
    const end = (run: Run, t: Task, outcome: Outcome, error?: unknown) => {
      unconfirmed.delete(t);
      this.finish(run, t, outcome, error);
    };
    let settled = false;
    let failure: unknown;
    try {
      // Runs claimed on an earlier session lost their lock with it: nothing to report.
      for (const s of batch) {
        if (s.run.session !== session) for (const t of s.run.tasks) end(s.run, t, "lost", s.error);
      }
      const live = batch.filter((s) => s.run.session === session);
      await reportFailures(
        session,
        live.filter((s) => s.error !== undefined),
        end,
      );
      const free = claim
        ? this.opts.concurrency + this.opts.prefetch - this.activeCount - this.prefetched.size
        : 0;
      // Runs beyond the idle slots are claimed ahead: not started (nor an attempt) until the
      // next round trip says so.
      const startKeys = Math.max(0, this.opts.concurrency - this.activeCount);
      const claimed = await settle(
        session,
        live.filter((s) => s.error === undefined),
        reports.started,
        reports.unlocks,
        {
          kinds: this.kinds,
          worker: this.name,
          maxTasks: free * this.maxBatch,
          maxKeys: free,
          startKeys,
        },
        end,
      );
      settled = true;
      if (claim) await this.startClaimed(session, claimed.rows, free, startKeys, claimed.nextInMs);
    } catch (err) {
      failure = err;
      throw err;
    } finally {
      if (failure !== undefined && !session.isLost && isStatementError(failure)) {
        // Refused by the server, committed nothing: the same reports go with the next round
        // trip (a batch's tasks already failed one by one are not sent again).
        const again = [...new Set(unconfirmed.values())].map((s) => {
          const tasks = s.run.tasks.filter((t) => unconfirmed.has(t));
          return tasks.length === s.run.tasks.length ? s : { ...s, run: { ...s.run, tasks } };
        });
        this.reports.retry(
          session,
          again,
          settled ? { settled: [], started: [], unlocks: [] } : reports,
        );
      } else {
        // The session failed mid-report: whatever was not confirmed is not ours to claim.
        for (const [t, s] of unconfirmed) this.finish(s.run, t, "lost", s.error);
      }
    }
  }

  /** Starts the claimed runs; more may wait when every slot was filled, else arm the timer. */
  private async startClaimed(
    session: LockSession,
    rows: TaskRow[],
    free: number,
    startKeys: number,
    nextInMs: number | null | undefined,
  ): Promise<void> {
    if (rows.length > 0)
      this.logger.debug(
        { event: "claim", tasks: rows.map((r) => Number(r.id)), free },
        "holdfast: claimed tasks",
      );
    const runs = groupRuns(rows);
    this.tracing.claimed(this.deps.pool, runs, this.logger);
    // A claim answered in the same read as the session's end (a dying backend sends its
    // answer and a FATAL back to back) resolves after the loss aborted the session's runs:
    // nothing would abort these, and their locks are gone. Start none; the sweep requeues them.
    if (session.isLost) {
      for (const tasks of runs) {
        const run = newRun(session, tasks, this.logger);
        for (const t of tasks) this.finish(run, t, "lost");
      }
      return;
    }
    if (runs.length > 0) {
      this.wakeTimer.claimed();
      this.leadership.wake(); // a task runs: the sweep leader must not be quiet
    }
    runs.forEach((tasks, i) => {
      if (this.activeCount < this.opts.concurrency) this.startRun(session, tasks, i >= startKeys);
      else this.prefetched.push(session, tasks);
    });
    if (runs.length === free) {
      this.wantClaim = true; // there may be more
    } else {
      // Some slot is idle: wake at the earliest delayed task (a timer, not a poll).
      const nextRunAt =
        nextInMs !== undefined ? this.wakeTimer.armIn(nextInMs) : await this.wakeTimer.arm(session);
      if (runs.length === 0) this.limitWaits.claimedNothing();
      this.emit("idle", { nextRunAt });
    }
  }

  private finish(run: Run, task: Task, outcome: Outcome, error?: unknown): void {
    logOutcome(run, task, outcome, error);
    this.tracing.finished(run, outcome, error);
    this.emit("task:end", task, error === undefined ? { outcome } : { outcome, error });
  }

  /** claimedAhead: the claim did not record this run as started; the next round trip will. */
  private startRun(session: LockSession, tasks: Task[], claimedAhead = false): void {
    const run = newRun(session, tasks, this.logger);
    if (claimedAhead) this.reports.started(session, tasks);
    const cancelledEarly = this.runs.add(run);
    run.logger.info({ event: "task_started", batch: tasks.length }, "holdfast: task started");
    this.limitWaits.started(run.task, run.logger);
    for (const t of tasks) this.emit("task:start", t);
    for (const id of cancelledEarly) this.cancelRunning(id);
    const started = this.tracing.run(run, this.name, () =>
      callHandler(this.opts.kinds.get(run.task.kind), run, this.deps.pool),
    );
    started.then(
      () => this.settle(run, undefined),
      (err: unknown) => this.settle(run, err ?? new Error("handler rejected without a reason")),
    );
  }

  private settle(run: Run, error: unknown): void {
    // A run aborted by a lock loss may return after the same task was claimed again.
    this.runs.remove(run);
    this.startPrefetched();
    if (run.session.isLost || run.controller.signal.reason instanceof LockLostError) {
      // The lock is gone: another worker may already run this task. Report nothing.
      for (const t of run.tasks) this.finish(run, t, "lost", error);
    } else {
      this.reports.ended(run, error, run.controller.signal.reason instanceof ShutdownError);
    }
    this.wantClaim = true;
    // Handlers that end in the same turn of the event loop are reported in one round trip.
    if (!this.kickScheduled) {
      this.kickScheduled = true;
      setImmediate(() => {
        this.kickScheduled = false;
        this.kick();
      });
    }
  }

  /** Starts prefetched runs in the free slots (no round trip: their locks are held already). */
  private startPrefetched(): void {
    const session = this.session;
    while (session && this.state === "running" && this.activeCount < this.opts.concurrency) {
      const tasks = this.prefetched.next(session);
      if (!tasks) return;
      this.startRun(session, tasks, true);
    }
  }

  /** Gives back prefetched runs that will not start here (stop): pending again, in place. */
  private async releasePrefetched(): Promise<void> {
    const session = this.session;
    const tasks = this.prefetched.takeAll(session);
    if (session && tasks.length > 0) await releaseUnstarted(session, tasks, this.logger);
  }

  /** Aborts the run holding task `id` (a whole batch: its other tasks fail and are retried). */
  private cancelRunning(id: number): void {
    // Unknown here: remembered briefly, as the claim that returns this task may be on its way.
    const run = this.runs.forCancel(id);
    if (!run) return;
    run.logger.info({ event: "task_cancel_requested" }, "holdfast: cancel requested");
    run.controller.abort(new TaskCancelledError(`holdfast: task ${id} was cancelled`));
  }

  private async openSession(): Promise<void> {
    const session = new LockSession(
      this.deps.connection,
      sessionName("lock", this.name),
      this.opts.lockSession,
    );
    session.on("lost", (err) => this.onLost(session, err));
    await session.connect();
    if (session.isLost) throw new LockLostError("holdfast: lock session lost while connecting");
    // A new session may reach another server (a failover): measure its clock again.
    await this.clock.measure((text) => session.query<{ ms: number }>(text), 3);
    if (this.state === "stopping" || this.state === "stopped") {
      await session.close();
      return;
    }
    this.session = session;
    this.leadership.drop(); // a lock of the session it was won on: gone with that session
  }

  /** Every handler of the lost session is aborted now: its locks may be freed at any time. */
  private onLost(session: LockSession, err: LockLostError): void {
    if (this.session !== session) return;
    const aborted = this.runs.runs(session);
    for (const run of aborted) run.controller.abort(err);
    const dropped = this.prefetched.drop(session);
    this.leadership.drop();
    this.logger.error(
      {
        event: "lock_lost",
        err,
        aborted: aborted.length,
        prefetchedDropped: dropped,
        silentMs: Date.now() - session.lastAnswerAt,
      },
      "holdfast: lock session lost; its handlers were aborted",
    );
    this.emit("lock:lost", err);
    if (this.state === "running") void this.reconnect();
  }

  /** Opens a new lock session with jittered exponential backoff, then sweeps and rescans. */
  private async reconnect(): Promise<void> {
    if (this.reconnecting) return;
    this.reconnecting = true;
    try {
      const attempts = await retryWithBackoff(() => this.openSession(), {
        initialMs: 100,
        maxMs: this.opts.reconnectMaxDelayMs,
        keepGoing: () => this.state === "running",
        onFailure: (err, _attempt, retryInMs) =>
          this.logger.warn(
            { event: "lock_reconnect_failed", err, retryInMs },
            "holdfast: lock session reconnect failed",
          ),
      });
      if (attempts === undefined || this.state !== "running") return;
      this.logger.info({ event: "lock_reconnected" }, "holdfast: lock session reconnected");
      this.emit("lock:reconnected");
      this.leadership.requestSweep();
      this.requestClaim();
    } finally {
      this.reconnecting = false;
    }
  }
}
