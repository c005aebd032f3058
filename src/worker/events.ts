import type { LockLostError } from "../errors.js";
import type { Task } from "../types.js";
import type { Outcome } from "./runs.js";

/** Events a worker emits; tests and metrics wait on these instead of sleeping. */
export interface WorkerEvents {
  /** The lock session is connected and the first scan is under way. */
  ready: [];
  /** Once per task; the tasks of a batch run start and end together. */
  "task:start": [Task];
  /** outcome: succeeded | failed | cancelled | lost (lock lost: nothing was reported) |
   *  rejected (stale fence). */
  "task:end": [Task, { outcome: Outcome; error?: unknown }];
  /** The lock session was lost; running handlers were aborted. */
  "lock:lost": [LockLostError];
  /** A new lock session is connected after a loss. */
  "lock:reconnected": [];
  /** A claim left a slot free: the worker waits for a NOTIFY, or until nextRunAt (its timer;
   *  null: no delayed task of its kinds, and full capped kinds are not waited for). */
  idle: [{ nextRunAt: Date | null }];
  /** This worker was elected to sweep orphans. */
  leader: [];
  /** Nothing can need a sweep before `until` (null: before a notification) unless a task is
   *  enqueued, retried or uncovered first: the leader pauses its timer sweeps, a follower
   *  stops expecting the leader's heartbeat. Once per quiet spell. */
  quiet: [{ until: Date | null; leader: boolean }];
  /** This worker, the sweep leader, enqueued a schedule's due ticks; lateMs[i]: how long after
   *  ticks[i] the enqueue committed. */
  "schedule:fired": [{ schedule: string; ticks: Date[]; lateMs: number[] }];
  /** This worker, the sweep leader, pruned a batch of finished tasks past their retention:
   *  rows deleted per table (tasks, their attempts, key rows, ended minimum intervals). */
  pruned: [{ tasks: number; attempts: number; keys: number; keyKinds: number }];
  /** The sweep returned orphaned tasks to the queue; `previous`: their dead holders. */
  takeover: [{ requeued: number; previous: PreviousHolder[] }];
  /** The worker measured the database's clock (at start, on a reconnect, then every minute):
   *  offsetMs is the server's clock minus this host's (positive: this host is behind), rttMs
   *  the measuring round trip (the error is at most half of it). */
  clock: [{ offsetMs: number; rttMs: number }];
  error: [unknown];
}

/** The holder of an orphaned task when its session died (worker name, backend pid). */
export interface PreviousHolder {
  task: number;
  key: string;
  kind: string;
  attempt: number;
  worker: string | null;
  pid: number | null;
}
