import type { Logger } from "pino";
import { maxTimerMs } from "./limits-of-node.js";
import type { LockSession } from "./lock-session.js";

/** Rows one prune batch deleted, per table. */
export interface PruneResult {
  tasks: number;
  attempts: number;
  keys: number;
  keyKinds: number;
}

export interface PrunerOptions {
  /** Tasks per batch (holdfast.prune's max_rows). */
  batchSize: number;
  /** Least time between two batches that found less than a full batch: an idle cluster is
   *  woken for pruning at most this often. */
  idleMs: number;
}

/** Least pause between two full batches. */
const minPauseMs = 20;
/** Least time between two partial batches, however short the retention. */
const minSpacingMs = 250;

/**
 * Pruning, run by the sweep leader on its lock session: each batch is one short transaction
 * (holdfast.prune_rows, api/55_prune.sql) that waits on no lock, so a leader killed mid-batch
 * leaves nothing half-deleted and the next leader simply runs the next batch. After a full
 * batch the next one follows after a pause as long as the batch took (the lock session also
 * claims: pruning takes at most half of it).
 *
 * Storage follows the rate: while tasks run (`activity()`: any wake the leader hears), the
 * next batch comes when the first of them can have expired (the shortest retention of any
 * kind, read with each batch) and at least half that retention after the last batch, so
 * finished work waits at most about 1.5 retentions; a batch that deleted tasks counts as
 * activity too, and one that saw tasks running comes back after the same spacing, doubled
 * each time until something expires (a fleet draining a backlog sends the leader no wake; a
 * ten-hour run alone costs a batch a minute). Without activity, a partial batch is followed
 * by the next task's expiry (holdfast.prune_due()) and at least `idleMs`: an idle cluster is
 * woken for pruning at most that often. The leader's quiet deadline covers that time (holdfast.quiet_until()), so a follower takes over the duty when a quiet leader died.
 */
export class Pruner {
  private timer: NodeJS.Timeout | undefined;
  /** When the timer fires (ms epoch; Infinity: not armed). */
  private nextAt = Number.POSITIVE_INFINITY;
  /** When the last batch ended (ms epoch). */
  private lastAt = 0;
  private running = false;
  /** The shortest retention of any kind (ms), as the last batch read it; Infinity: none. */
  private keepMs = Number.POSITIVE_INFINITY;
  /** A wake came since the last batch: tasks are running and will expire. */
  private active = false;
  /** Partial batches in a row that saw tasks running and nothing else (see runOnce). */
  private runningOnly = 0;

  constructor(
    private readonly logger: Logger,
    private readonly opts: PrunerOptions,
    /** Asks the worker to call run() on its lock session. */
    private readonly due: () => void,
    /** Told of each batch that deleted something. */
    private readonly pruned: (result: PruneResult) => void = () => {},
  ) {}

  /** Leadership began: a batch is due now. */
  start(): void {
    this.running = true;
    this.arm(0);
  }

  /** Leadership ended. */
  stop(): void {
    this.running = false;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.nextAt = Number.POSITIVE_INFINITY;
  }

  /** Tasks may run (a wake): the first of them can expire one shortest retention from now.
   *  Called on every wake, so it only moves the timer forward. */
  activity(): void {
    if (!this.running) return;
    this.active = true;
    const at = Math.max(
      this.lastAt + this.spacingMs(),
      Date.now() + Math.min(this.keepMs, this.opts.idleMs),
    );
    if (at < this.nextAt) this.arm(at - Date.now());
  }

  /** Least time between two partial batches while tasks run: half the shortest retention
   *  (a batch then carries half a retention of completions), at most `idleMs`. */
  private spacingMs(): number {
    return Math.min(this.opts.idleMs, Math.max(minSpacingMs, this.keepMs / 2));
  }

  /** One batch; resolves with what it deleted and the time (ms from now) the next is due. */
  async runOnce(session: LockSession): Promise<PruneResult & { nextInMs: number }> {
    const started = performance.now();
    const [row] = await session.query<{
      tasks: number;
      attempts: number;
      keys: number;
      key_kinds: number;
      due_ms: number | null;
      keep_ms: number | null;
      running: boolean;
    }>(pruneSql, [this.opts.batchSize]);
    this.keepMs = row?.keep_ms ?? Number.POSITIVE_INFINITY;
    // Tasks expiring now are activity as a wake is. Tasks only running will end and expire
    // too, but a long run must not keep the leader pruning every spacing: back off, doubling
    // up to idleMs.
    const active = this.active || (row?.tasks ?? 0) > 0;
    this.active = false;
    this.runningOnly = active || row?.running !== true ? 0 : this.runningOnly + 1;
    const took = performance.now() - started;
    const result: PruneResult = {
      tasks: row?.tasks ?? 0,
      attempts: row?.attempts ?? 0,
      keys: row?.keys ?? 0,
      keyKinds: row?.key_kinds ?? 0,
    };
    if (result.tasks + result.attempts + result.keys + result.keyKinds > 0) {
      this.logger.info(
        { event: "pruned", ...result, ms: Math.round(took) },
        "holdfast: pruned finished tasks past their retention",
      );
      this.pruned(result);
    }
    // A full batch: more is left (pace, so claims on this session get their turn).
    const full = result.tasks >= this.opts.batchSize || result.keyKinds >= this.opts.batchSize;
    const due = row?.due_ms ?? Number.POSITIVE_INFINITY;
    const nextInMs = full
      ? Math.max(minPauseMs, took)
      : active
        ? Math.max(this.spacingMs(), due)
        : this.runningOnly > 0
          ? Math.min(this.opts.idleMs, this.spacingMs() * 2 ** this.runningOnly)
          : Math.max(this.opts.idleMs, due);
    return { ...result, nextInMs };
  }

  /** Runs a batch and sleeps until the next is due. */
  async run(session: LockSession): Promise<void> {
    if (!this.running) return;
    const { nextInMs } = await this.runOnce(session);
    this.lastAt = Date.now();
    if (this.running) this.arm(nextInMs);
  }

  private arm(ms: number): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.nextAt = Date.now() + ms;
    if (ms === Number.POSITIVE_INFINITY) return;
    this.timer = setTimeout(
      () => {
        this.nextAt = Number.POSITIVE_INFINITY;
        this.due();
      },
      Math.min(maxTimerMs, Math.max(0, ms)),
    );
    this.timer.unref();
  }
}

/** One batch and, after it, when the next has something to do (ms from now; null: never), and
 *  how to pace the next (holdfast.prune_pace()). */
const pruneSql = `with p as materialized (select * from holdfast.prune_rows($1::int))
  select p.tasks, p.attempts, p.keys, p.key_kinds,
    case when d.at = 'infinity' then null
      else greatest(0, extract(epoch from d.at - clock_timestamp()) * 1000)::float8 end as due_ms,
    pace.keep_ms, pace.running
  from p, lateral (select holdfast.prune_due() as at from p) d, holdfast.prune_pace() pace`;
