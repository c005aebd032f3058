import type pg from "pg";
import type { Violation } from "./check.js";

/** A key with unfinished tasks: how long since anything happened on it, and its oldest task. */
export interface KeyProgress {
  key: string;
  open: number;
  /** Since the key's last progress: a task enqueued, started, or an attempt ended. */
  idleMs: number;
  oldest: { id: number; state: string; inStateMs: number };
}

/** Keys with pending or running tasks, each with its last progress and oldest open task. */
export async function openKeys(pool: pg.Pool): Promise<KeyProgress[]> {
  const { rows } = await pool.query<{
    key: string;
    open: number;
    idle_ms: number;
    id: string;
    state: string;
    in_state_ms: number;
  }>(
    `select o.key, o.open, extract(epoch from now() - greatest(o.last_task, a.last_end)) * 1000
         as idle_ms, f.id, f.state,
       extract(epoch from now() - case when f.state = 'running' then f.started_at
         else greatest(f.run_at, f.created_at) end) * 1000 as in_state_ms
     from (select t.key, count(*) filter (where t.state in ('pending', 'running'))::int as open,
             max(greatest(t.created_at, t.started_at, t.finished_at)) as last_task
           from chaos_tasks t group by t.key) o
     cross join lateral (select max(at.finished_at) as last_end from chaos_attempts at
                         join chaos_tasks x on x.id = at.task_id where x.key = o.key) a
     cross join lateral (select t.id, t.state, t.started_at, t.run_at, t.created_at
                         from chaos_tasks t
                         where t.key = o.key and t.state in ('pending', 'running')
                         order by t.id limit 1) f
     where o.open > 0`,
  );
  return rows.map((r) => ({
    key: r.key,
    open: r.open,
    idleMs: Math.round(r.idle_ms),
    oldest: { id: Number(r.id), state: r.state, inStateMs: Math.round(r.in_state_ms) },
  }));
}

/**
 * Waits until every task has ended, for as long as the system makes progress: a key is stuck
 * when it has unfinished tasks and nothing happened on it for `stuckMs`; `maxMs` bounds the
 * whole wait (a backlog that drains slowly is slow, not stuck, until then).
 */
export async function drain(
  pool: pg.Pool,
  opts: { stuckMs: number; maxMs: number; pollMs?: number },
): Promise<{ ms: number; violations: Violation[] }> {
  const started = Date.now();
  for (;;) {
    const keys = await openKeys(pool).catch(() => undefined); // Postgres may be restarting
    if (keys && keys.length === 0) return { ms: Date.now() - started, violations: [] };
    const stuck = (keys ?? []).filter((k) => k.idleMs > opts.stuckMs);
    if (keys && (stuck.length > 0 || Date.now() - started > opts.maxMs)) {
      const shown = stuck.length > 0 ? stuck : keys;
      return {
        ms: Date.now() - started,
        violations: shown.map((k) => ({
          kind: stuck.length > 0 ? "stuck" : "not-ended",
          detail: `key ${k.key}: ${k.open} unfinished, no progress for ${Math.round(k.idleMs / 1000)} s; task ${k.oldest.id} ${k.oldest.state} for ${Math.round(k.oldest.inStateMs / 1000)} s`,
        })),
      };
    }
    await new Promise((r) => setTimeout(r, opts.pollMs ?? 500));
  }
}
