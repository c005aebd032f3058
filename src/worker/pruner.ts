import type { Logger } from "pino";
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

/** Timers cannot wait longer than ~24.8 days; a longer wait fires early and finds nothing. */
const maxTimerMs = 2 ** 31 - 1;
/** Least pause between two full batches. */
const minPauseMs = 20;

/**
 * Pruning, run by the sweep leader on its lock session: each batch is one short transaction
 * (holdfast.prune_rows, api/55_prune.sql) that waits on no lock, so a leader killed mid-batch
 * leaves nothing half-deleted and the next leader simply runs the next batch. After a full
 * batch the next one follows after a pause as long as the batch took (the lock session also
 * claims: pruning takes at most half of it); after a partial one, the pruner sleeps until the
 * next task's retention ends (holdfast.prune_due()), and at least `idleMs`; tasks that end
 * meanwhile may expire sooner, so activity (`activity()`) brings the next batch forward to
 * `idleMs` after the last. The leader's quiet deadline covers that time
 * (holdfast.quiet_until()), so a follower takes over the duty when a quiet leader died.
 */
export class Pruner {
  private timer: NodeJS.Timeout | undefined;
  /** When the timer fires (ms epoch; Infinity: not armed). */
  private nextAt = Number.POSITIVE_INFINITY;
  /** When the last batch ended (ms epoch). */
  private lastAt = 0;
  private running = false;

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

  /** Tasks ran (they may end with a retention shorter than the pruner's sleep): prune again
   *  `idleMs` after the last batch at the latest. */
  activity(): void {
    if (!this.running) return;
    const at = this.lastAt + this.opts.idleMs;
    if (at < this.nextAt) this.arm(at - Date.now());
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
    }>(pruneSql, [this.opts.batchSize]);
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
    const nextInMs = full
      ? Math.max(minPauseMs, took)
      : Math.max(this.opts.idleMs, row?.due_ms ?? Number.POSITIVE_INFINITY);
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

/** One batch and, after it, when the next has something to do (ms from now; null: never). */
const pruneSql = `with p as materialized (select * from holdfast.prune_rows($1::int))
  select p.tasks, p.attempts, p.keys, p.key_kinds,
    case when d.at = 'infinity' then null
      else greatest(0, extract(epoch from d.at - clock_timestamp()) * 1000)::float8 end as due_ms
  from p, lateral (select holdfast.prune_due() as at from p) d`;
