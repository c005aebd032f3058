import type pg from "pg";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { TaskCancelledError } from "./errors.js";
import { queueSql, runningProgressSql } from "./inspect/queries.js";
import { limitSql } from "./limits.js";
import type { Outcome } from "./worker/runs.js";
import type { Worker } from "./worker/worker.js";

export interface MetricsOptions {
  /** Register into this registry (e.g. your app's) instead of a new one. */
  registry?: Registry;
}

/**
 * Prometheus metrics of holdfast workers, fed by the workers' typed events (no polling of the
 * worker), plus queue depth read from the database at scrape time. Names: docs/observability.md.
 */
export class HoldfastMetrics {
  readonly registry: Registry;
  private readonly started: Counter<"kind">;
  private readonly succeeded: Counter<"kind">;
  private readonly failed: Counter<"kind">;
  private readonly deadLettered: Counter<"kind">;
  private readonly cancelled: Counter<"kind">;
  private readonly handedOver: Counter<"kind">;
  private readonly throttled: Counter<"kind">;
  private readonly lost: Counter<"kind" | "reason">;
  private readonly takeovers: Counter;
  private readonly lockLosses: Counter;
  private readonly running: Gauge<"kind">;
  private readonly wakeLatency: Histogram<"kind">;
  private readonly runTime: Histogram<"kind" | "outcome">;
  private readonly pruned: Counter<"table">;
  private readonly tickLateness: Histogram<"schedule">;
  private readonly observed = new Map<Worker, () => void>();

  constructor(pool: pg.Pool | undefined, options: MetricsOptions = {}) {
    this.registry = options.registry ?? new Registry();
    const registers = [this.registry];
    const perKind = (name: string, help: string) =>
      new Counter({ name, help, labelNames: ["kind"] as const, registers });
    this.started = perKind("holdfast_tasks_started_total", "Handler runs started.");
    this.succeeded = perKind("holdfast_tasks_succeeded_total", "Runs reported succeeded.");
    this.failed = perKind(
      "holdfast_tasks_failed_total",
      "Runs reported failed (retried or dead-lettered).",
    );
    this.deadLettered = perKind(
      "holdfast_tasks_dead_lettered_total",
      "Failed runs that used the task's last attempt.",
    );
    this.cancelled = perKind("holdfast_tasks_cancelled_total", "Runs that ended cancelled.");
    this.handedOver = perKind(
      "holdfast_tasks_handed_over_total",
      "Runs stopped by a shutdown after a checkpoint, given back without counting an attempt.",
    );
    this.throttled = perKind(
      "holdfast_tasks_throttled_total",
      "Runs that threw ThrottledError: their limit closed, given back without counting an attempt.",
    );
    this.lost = new Counter({
      name: "holdfast_tasks_lost_total",
      help: "Runs whose outcome was not recorded: lock_lost (session gone) or stale_fence (a newer claim exists).",
      labelNames: ["kind", "reason"] as const,
      registers,
    });
    this.takeovers = new Counter({
      name: "holdfast_takeovers_total",
      help: "Orphaned tasks (holder died) requeued by this process's sweeper.",
      registers,
    });
    this.lockLosses = new Counter({
      name: "holdfast_lock_losses_total",
      help: "Lock sessions lost (every running handler of the session was aborted).",
      registers,
    });
    this.running = new Gauge({
      name: "holdfast_tasks_running",
      help: "Handlers running now in this process.",
      labelNames: ["kind"] as const,
      registers,
    });
    this.wakeLatency = new Histogram({
      name: "holdfast_wake_latency_seconds",
      help: "From a task becoming ready (its run_at) to its handler starting: wake latency when idle, plus queueing under load.",
      labelNames: ["kind"] as const,
      buckets: [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    this.runTime = new Histogram({
      name: "holdfast_task_run_seconds",
      help: "Handler run time by outcome (succeeded, failed, lost, rejected).",
      labelNames: ["kind", "outcome"] as const,
      buckets: [0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 21600],
      registers,
    });
    this.tickLateness = new Histogram({
      name: "holdfast_schedule_tick_lateness_seconds",
      help: "How long after its time each schedule tick was enqueued, by the sweep leader of this process.",
      labelNames: ["schedule"] as const,
      buckets: [0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60],
      registers,
    });
    this.pruned = new Counter({
      name: "holdfast_pruned_rows_total",
      help: "Rows this process deleted as the sweep leader's pruning, per table (tasks, attempts, keys, key_kinds).",
      labelNames: ["table"] as const,
      registers,
    });
    const observed = this.observed;
    new Gauge({
      name: "holdfast_clock_offset_seconds",
      help: "The database's clock minus this host's, per observed worker (positive: this host is behind), as last measured. Deadlines follow the database's clock; past 1 s the worker logs clock_skew.",
      labelNames: ["worker"] as const,
      registers,
      collect() {
        this.reset();
        for (const w of observed.keys()) {
          const ms = w.clockOffsetMs;
          if (ms !== null) this.set({ worker: w.name }, ms / 1000);
        }
      },
    });
    if (pool) {
      this.registerQueueGauges(pool, registers);
      this.registerProgressGauges(pool, registers);
      this.registerLimitGauges(pool, registers);
    }
  }

  /** Starts counting a worker's events; returns a function that stops it. Idempotent. */
  observe(worker: Worker): () => void {
    const existing = this.observed.get(worker);
    if (existing) return existing;
    const startedAt = new Map<number, number>();
    const start = (task: { id: number; kind: string; runAt: Date }) => {
      const now = Date.now();
      startedAt.set(task.id, now);
      this.started.inc({ kind: task.kind });
      this.running.inc({ kind: task.kind });
      // run_at is the server's time: read on its clock, a skewed host's latency stays true.
      const serverNow = now + (worker.clockOffsetMs ?? 0);
      this.wakeLatency.observe(
        { kind: task.kind },
        Math.max(0, serverNow - task.runAt.getTime()) / 1000,
      );
    };
    const end = (
      task: { id: number; kind: string; attempt: number; maxAttempts: number },
      info: { outcome: Outcome; error?: unknown },
    ) => {
      const kind = task.kind;
      const t0 = startedAt.get(task.id);
      startedAt.delete(task.id);
      if (t0 !== undefined) {
        this.running.dec({ kind });
        this.runTime.observe({ kind, outcome: info.outcome }, (Date.now() - t0) / 1000);
      }
      if (info.outcome === "succeeded") this.succeeded.inc({ kind });
      else if (info.outcome === "lost") this.lost.inc({ kind, reason: "lock_lost" });
      else if (info.outcome === "rejected") this.lost.inc({ kind, reason: "stale_fence" });
      else if (info.outcome === "handed_over") this.handedOver.inc({ kind });
      else if (info.outcome === "throttled") this.throttled.inc({ kind });
      else if (info.outcome === "cancelled" || info.error instanceof TaskCancelledError)
        this.cancelled.inc({ kind });
      else {
        this.failed.inc({ kind });
        if (task.attempt >= task.maxAttempts) this.deadLettered.inc({ kind });
      }
    };
    const takeover = ({ requeued }: { requeued: number }) => this.takeovers.inc(requeued);
    const lockLost = () => this.lockLosses.inc();
    const pruned = (p: { tasks: number; attempts: number; keys: number; keyKinds: number }) => {
      this.pruned.inc({ table: "tasks" }, p.tasks);
      this.pruned.inc({ table: "attempts" }, p.attempts);
      this.pruned.inc({ table: "keys" }, p.keys);
      this.pruned.inc({ table: "key_kinds" }, p.keyKinds);
    };
    const fired = ({ schedule, lateMs }: { schedule: string; lateMs: number[] }) => {
      for (const ms of lateMs) this.tickLateness.observe({ schedule }, ms / 1000);
    };
    worker.on("task:start", start);
    worker.on("task:end", end);
    worker.on("takeover", takeover);
    worker.on("lock:lost", lockLost);
    worker.on("schedule:fired", fired);
    worker.on("pruned", pruned);
    const detach = () => {
      worker.off("task:start", start);
      worker.off("task:end", end);
      worker.off("takeover", takeover);
      worker.off("lock:lost", lockLost);
      worker.off("schedule:fired", fired);
      worker.off("pruned", pruned);
      this.observed.delete(worker);
    };
    this.observed.set(worker, detach);
    return detach;
  }

  /** The Prometheus text exposition of every metric in the registry. */
  async text(): Promise<string> {
    return await this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** Running tasks' checkpoints, read at scrape time from every worker's tasks. */
  private registerProgressGauges(pool: pg.Pool, registers: Registry[]): void {
    const load = scrapeQuery<ProgressDbRow>(pool, runningProgressSql, []);
    new Gauge({
      name: "holdfast_task_progress",
      help: "Progress (0 to 1) of each running task whose checkpoint carries one, read at scrape time.",
      labelNames: ["kind", "task"] as const,
      registers,
      async collect() {
        const rows = await load();
        if (!rows) return;
        this.reset();
        for (const r of rows)
          if (r.progress !== null) this.set({ kind: r.kind, task: r.task_id }, r.progress);
      },
    });
    new Gauge({
      name: "holdfast_running_checkpoint_age_seconds",
      help: "Per kind, the longest a running task has gone without a checkpoint (since its run started when it has none): a stuck run stands out. Read at scrape time.",
      labelNames: ["kind"] as const,
      registers,
      async collect() {
        const rows = await load();
        if (!rows) return;
        this.reset();
        const worst = new Map<string, number>();
        for (const r of rows)
          worst.set(r.kind, Math.max(worst.get(r.kind) ?? 0, r.since_checkpoint_s));
        for (const [kind, s] of worst) this.set({ kind }, s);
      },
    });
  }

  /** Each limit's window (holdfast.limit_usage()), read at scrape time. */
  private registerLimitGauges(pool: pg.Pool, registers: Registry[]): void {
    const load = scrapeQuery<LimitDbRow>(pool, limitSql.usage, []);
    const gauge = (
      name: string,
      help: string,
      labels: readonly string[],
      set: (g: Gauge<string>, r: LimitDbRow) => void,
    ) =>
      new Gauge({
        name,
        help,
        labelNames: labels,
        registers,
        async collect() {
          const rows = await load();
          if (!rows) return;
          this.reset();
          for (const r of rows) set(this, r);
        },
      });
    gauge(
      "holdfast_limit_units",
      "Units a limit's window holds now: reserved (runs not charged yet) and charged; read at scrape time.",
      ["limit", "state"],
      (g, r) => {
        g.set({ limit: r.name, state: "reserved" }, Number(r.reserved));
        g.set({ limit: r.name, state: "charged" }, Number(r.charged));
      },
    );
    gauge("holdfast_limit_max_units", "Units a limit allows per window.", ["limit"], (g, r) =>
      g.set({ limit: r.name }, Number(r.units)),
    );
    gauge(
      "holdfast_limit_waiting_tasks",
      "Ready tasks of a limit's kinds that cannot start for want of room, read at scrape time.",
      ["limit"],
      (g, r) => g.set({ limit: r.name }, Number(r.waiting)),
    );
    gauge(
      "holdfast_limit_closed_seconds",
      "Seconds until a throttled limit reopens (0: open), read at scrape time.",
      ["limit"],
      (g, r) =>
        g.set(
          { limit: r.name },
          r.closed_until ? Math.max(0, (r.closed_until.getTime() - Date.now()) / 1000) : 0,
        ),
    );
  }

  /** Queue depth is read at scrape time (one grouped query), so it covers every producer. */
  private registerQueueGauges(pool: pg.Pool, registers: Registry[]): void {
    const load = scrapeQuery<QueueDbRow>(pool, queueSql, [null, null]);
    new Gauge({
      name: "holdfast_queue_tasks",
      help: "Tasks per kind and state (pending = ready now, delayed, running, dead_lettered), read at scrape time.",
      labelNames: ["kind", "state"] as const,
      registers,
      async collect() {
        const rows = await load();
        if (!rows) return;
        this.reset();
        for (const r of rows) {
          this.set({ kind: r.kind, state: "pending" }, r.pending);
          this.set({ kind: r.kind, state: "delayed" }, r.delayed);
          this.set({ kind: r.kind, state: "running" }, r.running);
          this.set({ kind: r.kind, state: "dead_lettered" }, r.dead_lettered);
        }
      },
    });
    new Gauge({
      name: "holdfast_queue_oldest_pending_seconds",
      help: "Wait of the oldest ready task per kind (0 when none), read at scrape time.",
      labelNames: ["kind"] as const,
      registers,
      async collect() {
        const rows = await load();
        if (!rows) return;
        this.reset();
        for (const r of rows) this.set({ kind: r.kind }, (r.oldest_pending_ms ?? 0) / 1000);
      },
    });
  }
}

interface ProgressDbRow {
  task_id: string;
  kind: string;
  progress: number | null;
  since_checkpoint_s: number;
}

interface LimitDbRow {
  name: string;
  units: string;
  reserved: string;
  charged: string;
  waiting: string;
  closed_until: Date | null;
}

interface QueueDbRow {
  kind: string;
  pending: number;
  running: number;
  delayed: number;
  dead_lettered: number;
  oldest_pending_ms: number | null;
}

/**
 * A query read at scrape time by several gauges: those collecting at once share the query
 * while it is in flight. undefined on an error: the gauges keep their last values (a scrape
 * must not fail on a database hiccup).
 */
function scrapeQuery<R extends pg.QueryResultRow>(
  pool: pg.Pool,
  text: string,
  values: unknown[],
): () => Promise<R[] | undefined> {
  let inFlight: Promise<R[] | undefined> | undefined;
  return () => {
    inFlight ??= pool
      .query<R>(text, values)
      .then(
        (r) => r.rows,
        () => undefined,
      )
      .finally(() => {
        inFlight = undefined;
      });
    return inFlight;
  };
}
