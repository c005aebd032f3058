import type { Task } from "../types.js";
import type { LockSession } from "./lock-session.js";
import type { Run } from "./runs.js";

/** How long a cancel notice for a task not (yet) known here is remembered. */
const earlyCancelTtlMs = 60_000;

/**
 * The worker's runs in progress. A run whose lock was lost may still be in its handler when
 * its task is claimed again: it is then a zombie, still counted against concurrency until
 * its handler returns, while the new run takes its place.
 */
export class RunTable {
  /** Runs by their first task's id. */
  private readonly running = new Map<number, Run>();
  private readonly zombies = new Set<Run>();
  /** Finds a run from any of its tasks (cancel). */
  private readonly byTask = new Map<number, Run>();
  /** Cancels notified for tasks not (yet) known here: a cancel can overtake its claim. */
  private readonly earlyCancels = new Map<number, number>();

  /** Handlers running now, zombies included. */
  get size(): number {
    return this.running.size + this.zombies.size;
  }

  /** Runs whose lock is still held (zombies excluded). */
  get live(): number {
    return this.running.size;
  }

  runs(session?: LockSession): Run[] {
    const all = [...this.running.values()];
    return session ? all.filter((r) => r.session === session) : all;
  }

  /** Adds a run; returns the ids of its tasks whose cancel arrived before it. */
  add(run: Run): number[] {
    const previous = this.running.get(run.task.id);
    if (previous) this.zombies.add(previous);
    this.running.set(run.task.id, run);
    for (const t of run.tasks) this.byTask.set(t.id, run);
    return run.tasks.filter((t) => this.earlyCancels.delete(t.id)).map((t) => t.id);
  }

  /** Removes a run whose handler returned (it may have been displaced meanwhile). */
  remove(run: Run): void {
    if (this.running.get(run.task.id) === run) this.running.delete(run.task.id);
    this.zombies.delete(run);
    for (const t of run.tasks) if (this.byTask.get(t.id) === run) this.byTask.delete(t.id);
  }

  /** The run holding task `id`; when there is none, the cancel is remembered for a while. */
  forCancel(id: number): Run | undefined {
    const run = this.byTask.get(id);
    if (run) return run;
    const now = Date.now();
    this.earlyCancels.set(id, now);
    for (const [k, at] of this.earlyCancels)
      if (now - at > earlyCancelTtlMs) this.earlyCancels.delete(k);
    return undefined;
  }
}

/**
 * Runs claimed ahead of free slots (the `prefetch` option), in claim order. Each holds its
 * key's lock on the session that claimed it, so it may start only while that session lives.
 */
export class PrefetchQueue {
  private queue: Array<{ session: LockSession; tasks: Task[] }> = [];

  get size(): number {
    return this.queue.length;
  }

  push(session: LockSession, tasks: Task[]): void {
    this.queue.push({ session, tasks });
  }

  /** The next run that may start on `session`; runs of other (lost) sessions are dropped. */
  next(session: LockSession | undefined): Task[] | undefined {
    for (let p = this.queue.shift(); p; p = this.queue.shift()) {
      if (p.session === session && !session.isLost) return p.tasks;
    }
    return undefined;
  }

  /** Empties the queue; returns the tasks still held on `session` (to give back). */
  takeAll(session: LockSession | undefined): Task[] {
    const all = this.queue.splice(0);
    return all.filter((p) => p.session === session && !session.isLost).flatMap((p) => p.tasks);
  }

  /** Drops the runs of a lost session (their locks are gone); returns how many. */
  drop(session: LockSession): number {
    const before = this.queue.length;
    this.queue = this.queue.filter((p) => p.session !== session);
    return before - this.queue.length;
  }
}
