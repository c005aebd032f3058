import type pg from "pg";
import type { HandlerContext, Task } from "../../src/index.js";
import { abortableSleep } from "./wait.js";

export interface RunRow {
  task_id: number;
  key: string;
  attempt: number;
  fence: string;
  worker: string;
  started_at: Date;
  ended_at: Date | null;
}

export async function createRunsTable(pool: pg.Pool): Promise<void> {
  await pool.query(`create table if not exists runs (
    task_id bigint, key text, attempt int, fence bigint, worker text,
    started_at timestamptz, ended_at timestamptz)`);
}

/** Pairs of runs of one key whose intervals overlap (a run without an end counts as open until `openUntil`). */
type Interval = Pick<RunRow, "key" | "started_at" | "ended_at">;

export function overlaps<R extends Interval>(
  runs: R[],
  openUntil: (r: R) => number = () => Number.POSITIVE_INFINITY,
): Array<[R, R]> {
  const byKey = new Map<string, R[]>();
  for (const r of runs) byKey.set(r.key, [...(byKey.get(r.key) ?? []), r]);
  const bad: Array<[R, R]> = [];
  for (const list of byKey.values()) {
    list.sort((a, b) => a.started_at.getTime() - b.started_at.getTime());
    let latest: R | undefined; // the run that ends last among those started so far
    const end = (r: R) => (r.ended_at ? r.ended_at.getTime() : openUntil(r));
    for (const cur of list) {
      if (latest && cur.started_at.getTime() < end(latest)) bad.push([latest, cur]);
      if (!latest || end(cur) > end(latest)) latest = cur;
    }
  }
  return bad;
}

/**
 * A test handler's body: records the run's start in `runs`, works `ms` (abortable through the
 * handler's signal), then marks the run ended in a transaction guarded by the fence.
 */
export async function recordedRun(
  pool: pg.Pool,
  task: Task<{ ms: number }>,
  ctx: HandlerContext,
  worker: string,
): Promise<void> {
  await pool.query(
    "insert into runs (task_id, key, attempt, fence, worker, started_at) values ($1, $2, $3, $4, $5, clock_timestamp())",
    [task.id, task.key, task.attempt, task.fence, worker],
  );
  await abortableSleep(task.payload.ms, ctx.signal);
  const client = await pool.connect();
  try {
    await client.query("begin");
    await ctx.assertFence(client);
    await client.query(
      "update runs set ended_at = clock_timestamp() where task_id = $1 and fence = $2",
      [task.id, task.fence],
    );
    await client.query("commit");
  } catch (err) {
    await client.query("rollback").catch(() => {});
    throw err;
  } finally {
    client.release();
  }
}
