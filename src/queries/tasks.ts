import type { Task } from "../types.js";

/** A row of holdfast.tasks as node-postgres returns it (int8 as string). */
export interface TaskRow {
  id: string;
  kind: string;
  key: string;
  payload: unknown;
  attempt: number;
  max_attempts: number;
  fence: string;
  priority: number;
  run_at: Date;
  created_at: Date;
}

export function toTask(row: TaskRow): Task {
  return {
    id: Number(row.id),
    kind: row.kind,
    key: row.key,
    payload: row.payload,
    attempt: row.attempt,
    maxAttempts: row.max_attempts,
    fence: Number(row.fence),
    priority: row.priority,
    runAt: row.run_at,
    createdAt: row.created_at,
  };
}

export const sql = {
  defineKind: "select holdfast.define_kind($1, $2)",
  enqueue: "select id, deduped from holdfast.enqueue_task($1, $2, $3::jsonb, $4, $5, $6, $7)",
  claim: "select * from holdfast.claim($1::text[], $2, $3)",
  /** Completions and the next claim in one round trip (rows: rejected id, or a claimed task). */
  settle:
    "select s.rejected, (s.task).* from holdfast.settle($1::bigint[], $2::bigint[], $3::text[], $4, $5) s",
  nextRunAt: "select holdfast.next_run_at($1::text[]) as at",
  completeMany: "select holdfast.complete_many($1::bigint[], $2::bigint[]) as rejected",
  fail: "select holdfast.fail($1, $2, $3, $4::interval, $5) as ok",
  cancel: "select holdfast.cancel($1) as ok",
  assertFence: "select holdfast.assert_fence($1, $2)",
  tryLead: "select holdfast.try_lead() as leader",
  sweep: "select holdfast.sweep() as requeued",
} as const;
