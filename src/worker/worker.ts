import { EventEmitter } from "node:events";
import type pg from "pg";
import type { Logger } from "pino";
import {
  HoldfastError,
  LockLostError,
  ShutdownError,
  TaskCancelledError,
  translateError,
} from "../errors.js";
import type { ResolvedWorkerOptions } from "../options.js";
import { sql, type TaskRow, toTask } from "../queries/tasks.js";
import type { HandlerContext, Queryable, Task } from "../types.js";
import { Listener } from "./listener.js";
import { LockSession } from "./lock-session.js";

/** Events a worker emits; tests and metrics wait on these instead of sleeping. */
export interface WorkerEvents {
  /** The lock session is connected and the first scan is under way. */
  ready: [];
  "task:start": [Task];
  /** outcome: succeeded | failed | lost (lock lost: nothing was reported) | rejected (stale fence). */
  "task:end": [Task, { outcome: "succeeded" | "failed" | "lost" | "rejected"; error?: unknown }];
  /** The lock session was lost; running handlers were aborted. */
  "lock:lost": [LockLostError];
  /** A new lock session is connected after a loss. */
  "lock:reconnected": [];
  /** This worker was elected to sweep orphans. */
  leader: [];
  /** The sweep returned orphaned tasks to the queue. */
  takeover: [{ requeued: number }];
  error: [unknown];
}

interface Run {
  task: Task;
  controller: AbortController;
  session: LockSession;
  logger: Logger;
}

interface Settlement {
  run: Run;
  error?: unknown;
}

export interface WorkerDeps {
  pool: pg.Pool;
  connection: pg.ClientConfig;
  logger: Logger;
}

/**
 * Runs handlers with at most `concurrency` tasks at once. One lock session holds the locks of
 * all running tasks; one LISTEN session wakes the worker. All lock-session traffic goes
 * through `pump`, one call at a time, so completions and claims batch naturally.
 */
export class Worker extends EventEmitter<WorkerEvents> {
  readonly name: string;
  private readonly kinds: string[];
  private readonly logger: Logger;
  private session: LockSession | undefined;
  private listener: Listener | undefined;
  private readonly running = new Map<number, Run>();
  private settled: Settlement[] = [];
  private wantClaim = false;
  private sweepDue = false;
  private leader = false;
  private pumping: Promise<void> | undefined;
  private state: "new" | "starting" | "running" | "stopping" | "stopped" = "new";
  private timers: NodeJS.Timeout[] = [];
  private delayTimer: NodeJS.Timeout | undefined;
  private reconnecting = false;

  constructor(
    private readonly deps: WorkerDeps,
    private readonly opts: ResolvedWorkerOptions,
  ) {
    super();
    this.name = opts.name;
    this.kinds = [...opts.kinds.keys()];
    this.logger = deps.logger.child({ worker: opts.name });
    // An unhandled 'error' event would crash the host process; errors are logged already.
    this.on("error", () => {});
  }

  /** Tasks running now. */
  get activeCount(): number {
    return this.running.size;
  }

  async start(): Promise<void> {
    if (this.state !== "new")
      throw new HoldfastError("HF_STATE", `holdfast: worker already ${this.state}`);
    this.state = "starting";
    try {
      for (const k of this.opts.kinds.values()) {
        await this.deps.pool.query(sql.defineKind, [k.kind, k.maxAttempts ?? null]);
      }
      // LISTEN before the first scan, so a task enqueued in between still wakes us.
      this.listener = new Listener(
        this.deps.connection,
        `holdfast:listen:${this.name}`.slice(0, 63),
        {
          wake: (kind) => {
            if (this.opts.kinds.has(kind)) this.requestClaim();
          },
          cancel: (id) => this.cancelRunning(id),
          reconnected: () => this.requestClaim(),
        },
        this.logger,
      );
      await this.listener.start();
      await this.openSession();
    } catch (err) {
      this.state = "stopped";
      await this.listener?.close();
      throw err;
    }
    this.state = "running";
    this.timers.push(
      setInterval(() => {
        this.sweepDue = true;
        this.kick();
      }, this.opts.sweepIntervalMs),
      setInterval(() => this.requestClaim(), this.opts.rescanIntervalMs),
    );
    for (const t of this.timers) t.unref();
    this.sweepDue = true;
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
    if (this.delayTimer) clearTimeout(this.delayTimer);
    this.logger.info(
      { event: "worker_stopping", running: this.running.size },
      "holdfast: worker stopping",
    );
    const drained = this.waitIdle();
    const timeout = new Promise<"timeout">((r) => {
      const t = setTimeout(() => r("timeout"), this.opts.shutdownTimeoutMs);
      t.unref();
      void drained.then(() => clearTimeout(t));
    });
    if ((await Promise.race([drained, timeout])) === "timeout") {
      this.logger.warn(
        { event: "shutdown_timeout", running: this.running.size },
        "holdfast: aborting handlers still running",
      );
      for (const run of this.running.values()) {
        run.controller.abort(new ShutdownError("holdfast: worker shutdown timeout elapsed"));
      }
      await drained;
    }
    this.kick();
    await this.pumping;
    await this.listener?.close();
    await this.session?.close();
    this.state = "stopped";
    this.logger.info({ event: "worker_stopped" }, "holdfast: worker stopped");
  }

  private async waitIdle(): Promise<void> {
    while (this.running.size > 0) {
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
    return this.settled.length > 0 || this.sweepDue || (this.canClaim() && this.wantClaim);
  }

  private canClaim(): boolean {
    return this.state === "running" && this.running.size < this.opts.concurrency;
  }

  private async pump(): Promise<void> {
    while (this.hasWork()) {
      const session = this.session;
      if (!session) return;
      try {
        const done =
          this.settled.length > 0 ? await this.report(session, this.settled.splice(0)) : [];
        const claim = this.canClaim() && this.wantClaim;
        if (claim) this.wantClaim = false;
        if (done.length > 0 || claim) await this.settleAndClaim(session, done, claim);
        if (this.sweepDue) {
          this.sweepDue = false;
          await this.sweep(session);
        }
      } catch (err) {
        if (err instanceof LockLostError || session.isLost) {
          session.markLost("lock session failed", err);
          return;
        }
        this.logger.error({ event: "pump_error", err }, "holdfast: lock session query failed");
        this.emit("error", err);
        session.markLost("lock session query failed", err);
        return;
      }
    }
  }

  /**
   * Reports successful runs and claims up to the free slots in one round trip (holdfast.settle):
   * a busy worker pays one lock-session round trip and one commit per batch.
   */
  private async settleAndClaim(session: LockSession, done: Run[], claim: boolean): Promise<void> {
    const free = claim ? this.opts.concurrency - this.running.size : 0;
    // Nothing to report (an idle worker woken by NOTIFY): claim directly, skipping settle's
    // plpgsql layer on the wake path.
    const rows =
      done.length === 0
        ? (await session.query<TaskRow>(sql.claim, [this.kinds, this.name, free])).map((r) => ({
            ...r,
            rejected: null,
          }))
        : await session.query<TaskRow & { rejected: string | null }>(sql.settle, [
            done.map((r) => r.task.id),
            done.map((r) => r.task.fence),
            this.kinds,
            this.name,
            free,
          ]);
    const rejected = new Set(
      rows.filter((r) => r.rejected !== null).map((r) => Number(r.rejected)),
    );
    for (const run of done) this.finish(run, rejected.has(run.task.id) ? "rejected" : "succeeded");
    if (!claim) return;
    const claimed = rows.filter((r) => r.rejected === null && r.id !== null);
    claimed.sort((a, b) => Number(a.id) - Number(b.id));
    for (const row of claimed) this.startRun(session, toTask(row));
    if (claimed.length === free) {
      this.wantClaim = true; // there may be more
    } else if (claimed.length === 0) {
      await this.armDelayTimer(session);
    }
  }

  /** Wakes the worker when the earliest delayed task becomes ready. */
  private async armDelayTimer(session: LockSession): Promise<void> {
    const [row] = await session.query<{ at: Date | null }>(sql.nextRunAt, [this.kinds]);
    if (this.delayTimer) clearTimeout(this.delayTimer);
    this.delayTimer = undefined;
    if (!row?.at) return;
    const delay = Math.min(Math.max(row.at.getTime() - Date.now(), 0), this.opts.rescanIntervalMs);
    this.delayTimer = setTimeout(() => this.requestClaim(), delay + 1);
    this.delayTimer.unref();
  }

  private async sweep(session: LockSession): Promise<void> {
    if (!this.leader) {
      const [row] = await session.query<{ leader: boolean }>(sql.tryLead);
      if (!row?.leader) return;
      this.leader = true;
      this.logger.info({ event: "leader" }, "holdfast: elected to sweep orphaned tasks");
      this.emit("leader");
    }
    const [row] = await session.query<{ requeued: number }>(sql.sweep);
    const requeued = row?.requeued ?? 0;
    if (requeued > 0) {
      this.logger.warn(
        { event: "takeover", requeued },
        "holdfast: requeued tasks whose holder died",
      );
      this.emit("takeover", { requeued });
      this.wantClaim = true;
    }
  }

  /**
   * Reports failed runs one by one and returns the successful ones, which settleAndClaim
   * reports in one batch. Runs of an earlier (lost) session are reported nowhere.
   */
  private async report(session: LockSession, batch: Settlement[]): Promise<Run[]> {
    const live = batch.filter((s) => s.run.session === session);
    for (const s of batch) {
      if (s.run.session !== session) this.finish(s.run, "lost", s.error);
    }
    for (const s of live.filter((x) => x.error !== undefined)) {
      const err = s.error instanceof Error ? s.error : new Error(String(s.error));
      const [row] = await session.query<{ ok: boolean }>(sql.fail, [
        s.run.task.id,
        s.run.task.fence,
        `${err.name}: ${err.message}`,
        null,
        err.stack ?? null,
      ]);
      this.finish(s.run, row?.ok ? "failed" : "rejected", s.error);
    }
    return live.filter((s) => s.error === undefined).map((s) => s.run);
  }

  private finish(
    run: Run,
    outcome: "succeeded" | "failed" | "lost" | "rejected",
    error?: unknown,
  ): void {
    const log = run.logger;
    if (outcome === "succeeded") log.info({ event: "task_succeeded" }, "holdfast: task succeeded");
    else if (outcome === "failed")
      log.warn({ event: "task_failed", err: error }, "holdfast: task failed");
    else if (outcome === "rejected")
      log.warn(
        { event: "report_rejected" },
        "holdfast: report rejected: a newer claim of the key exists",
      );
    else
      log.warn(
        { event: "task_lost", err: error },
        "holdfast: lock lost during the run; outcome not reported",
      );
    this.emit("task:end", run.task, error === undefined ? { outcome } : { outcome, error });
  }

  private startRun(session: LockSession, task: Task): void {
    const kind = this.opts.kinds.get(task.kind);
    const controller = new AbortController();
    const logger = this.logger.child({
      task: task.id,
      kind: task.kind,
      key: task.key,
      attempt: task.attempt,
      fence: task.fence,
    });
    const run: Run = { task, controller, session, logger };
    this.running.set(task.id, run);
    const ctx: HandlerContext = {
      signal: controller.signal,
      logger,
      assertFence: async (client: Queryable) => {
        try {
          await client.query(sql.assertFence, [task.key, task.fence]);
        } catch (err) {
          throw translateError(err);
        }
      },
    };
    logger.info({ event: "task_started" }, "holdfast: task started");
    this.emit("task:start", task);
    const started = (async () => {
      if (!kind) throw new HoldfastError("HF_CONFIG", `holdfast: no handler for kind ${task.kind}`);
      await kind.handler(task, ctx);
    })();
    started.then(
      () => this.settle(run, undefined),
      (err: unknown) => this.settle(run, err ?? new Error("handler rejected without a reason")),
    );
  }

  private settle(run: Run, error: unknown): void {
    this.running.delete(run.task.id);
    if (run.session.isLost || run.controller.signal.reason instanceof LockLostError) {
      // The lock is gone: another worker may already run this task. Report nothing.
      this.finish(run, "lost", error);
    } else {
      this.settled.push(error === undefined ? { run } : { run, error });
    }
    this.wantClaim = true;
    this.kick();
  }

  private cancelRunning(id: number): void {
    const run = this.running.get(id);
    if (!run) return;
    run.logger.info({ event: "task_cancel_requested" }, "holdfast: cancel requested");
    run.controller.abort(new TaskCancelledError(`holdfast: task ${id} was cancelled`));
  }

  private async openSession(): Promise<void> {
    const session = new LockSession(
      this.deps.connection,
      `holdfast:lock:${this.name}`.slice(0, 63),
    );
    session.on("lost", (err) => this.onLost(session, err));
    await session.connect();
    this.session = session;
    this.leader = false;
  }

  private onLost(session: LockSession, err: LockLostError): void {
    if (this.session !== session) return;
    const aborted = [...this.running.values()].filter((r) => r.session === session);
    this.logger.error(
      { event: "lock_lost", err, aborted: aborted.length },
      "holdfast: lock session lost; aborting its handlers",
    );
    for (const run of aborted) run.controller.abort(err);
    this.emit("lock:lost", err);
    if (this.state === "running") void this.reconnect();
  }

  private async reconnect(): Promise<void> {
    if (this.reconnecting) return;
    this.reconnecting = true;
    let delay = 100;
    try {
      while (this.state === "running") {
        try {
          await this.openSession();
          this.logger.info({ event: "lock_reconnected" }, "holdfast: lock session reconnected");
          this.emit("lock:reconnected");
          this.sweepDue = true;
          this.requestClaim();
          return;
        } catch (err) {
          this.logger.warn(
            { event: "lock_reconnect_failed", err, retryInMs: delay },
            "holdfast: lock session reconnect failed",
          );
          await new Promise((r) => setTimeout(r, delay));
          delay = Math.min(delay * 2, this.opts.reconnectMaxDelayMs);
        }
      }
    } finally {
      this.reconnecting = false;
    }
  }
}
