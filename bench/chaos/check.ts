import type pg from "pg";

export interface LogRun {
  task_id: number;
  key: string;
  kind: string;
  attempt: number;
  fence: string;
  worker: string;
  started: number;
  ended: number | null;
}

export interface Violation {
  kind:
    | "overlap"
    | "not-ended"
    | "ended-twice"
    | "fence-order"
    | "order"
    | "over-cap"
    | "extra-session"
    | "stuck-handler"
    | "stuck"
    | "tick-skipped"
    | "tick-duplicated";
  detail: string;
}

export interface CheckResult {
  tasks: number;
  succeeded: number;
  deadLettered: number;
  runs: number;
  /** Extra finished runs of succeeded tasks: a completion report lost in a fault. */
  reruns: number;
  violations: Violation[];
}

/**
 * The checker reads tasks and attempts from its own copies, kept by triggers on holdfast's
 * tables (inserts and updates, not deletes): the soak runs with a short retention, and a task
 * pruned before the check must still be checked. Create them before the first task.
 */
export async function createHistoryCopies(pool: pg.Pool): Promise<void> {
  await pool.query(`
    create table chaos_tasks (like holdfast.tasks);
    alter table chaos_tasks add primary key (id);
    create table chaos_attempts (like holdfast.attempts);
    alter table chaos_attempts add primary key (task_id, attempt);
    -- (Schema-qualified: they fire inside holdfast's functions, whose search_path is fixed.)
    create function public.chaos_copy_task() returns trigger language plpgsql as $f$
    begin
      delete from public.chaos_tasks where id = new.id;
      insert into public.chaos_tasks select new.*;
      return null;
    end $f$;
    create function public.chaos_copy_attempt() returns trigger language plpgsql as $f$
    begin
      delete from public.chaos_attempts where task_id = new.task_id and attempt = new.attempt;
      insert into public.chaos_attempts select new.*;
      return null;
    end $f$;
    create trigger chaos_copy after insert or update on holdfast.tasks
      for each row execute function public.chaos_copy_task();
    create trigger chaos_copy after insert or update on holdfast.attempts
      for each row execute function public.chaos_copy_attempt();
    insert into chaos_tasks select * from holdfast.tasks;
    insert into chaos_attempts select * from holdfast.attempts;`);
}

/**
 * `runEnd(run)`: when a run without a recorded end stopped (its handler's exit event, or the
 * kill of its process); undefined if unknown, which counts as still running.
 */
export async function check(
  pool: pg.Pool,
  runEnd: (run: LogRun) => number | undefined,
): Promise<CheckResult> {
  const { rows: raw } = await pool.query<{
    task_id: string;
    key: string;
    kind: string;
    attempt: number;
    fence: string;
    worker: string;
    started: string;
    ended: string | null;
  }>(
    `select l.task_id, l.key, t.kind, l.attempt, l.fence, l.worker,
            extract(epoch from l.started_at) * 1000 as started,
            extract(epoch from l.ended_at) * 1000 as ended
     from chaos_log l join chaos_tasks t on t.id = l.task_id`,
  );
  const runs: LogRun[] = raw.map((r) => ({
    ...r,
    task_id: Number(r.task_id),
    started: Number(r.started),
    ended: r.ended === null ? null : Number(r.ended),
  }));
  const { rows: tasks } = await pool.query<{
    id: string;
    key: string;
    state: string;
    succeeded: number;
    finals: number;
    /** Same priority group, strict kind, enqueued without a delay: its order is checked. */
    order_group: string | null;
    /** Seconds in its state (running: since its start; pending: since it was due). */
    in_state_s: number;
    /** Seconds since its key last progressed (a run started or an attempt ended), null: never. */
    key_idle_s: number | null;
  }>(
    `select t.id, t.key, t.state,
            extract(epoch from now() - case when t.state = 'running' then t.started_at
              else greatest(t.run_at, t.created_at) end)::float8 as in_state_s,
            extract(epoch from now() - greatest(
              (select max(l.started_at) from chaos_log l where l.key = t.key),
              (select max(a.finished_at) from holdfast.attempts a
               join holdfast.tasks o on o.id = a.task_id where o.key = t.key)))::float8
              as key_idle_s,
            case when kd.strict_order and t.place_at = t.created_at
              then t.key || ' ' || t.priority end as order_group,
            (select count(*)::int from chaos_attempts a
             where a.task_id = t.id and a.outcome = 'succeeded') as succeeded,
            (select count(*)::int from chaos_attempts a
             where a.task_id = t.id and a.outcome in ('failed', 'lost')
               and a.attempt >= t.max_attempts) as finals
     from chaos_tasks t join holdfast.kinds kd on kd.kind = t.kind`,
  );
  const violations: Violation[] = [];

  // 1. No two runs of one key overlapped.
  const byKey = new Map<string, LogRun[]>();
  for (const r of runs) byKey.set(r.key, [...(byKey.get(r.key) ?? []), r]);
  const end = (r: LogRun) => r.ended ?? runEnd(r) ?? Number.POSITIVE_INFINITY;
  for (const list of byKey.values()) {
    list.sort((a, b) => a.started - b.started);
    let latest: LogRun | undefined;
    for (const cur of list) {
      if (latest && cur.started < end(latest)) {
        violations.push({
          kind: "overlap",
          detail: `key ${cur.key}: task ${latest.task_id} fence ${latest.fence} (${latest.worker}) still running when task ${cur.task_id} fence ${cur.fence} (${cur.worker}) started`,
        });
      }
      if (latest && BigInt(cur.fence) <= BigInt(latest.fence)) {
        violations.push({
          kind: "fence-order",
          detail: `key ${cur.key}: fence ${cur.fence} started after fence ${latest.fence}`,
        });
      }
      if (!latest || end(cur) > end(latest)) latest = cur;
    }
  }

  // 2. Order per key (guarantee 6): of two tasks of a strict kind, equal priority, enqueued
  // without a delay, the later one's first run starts after the earlier one's last run started
  // (a lost or failed attempt keeps its place), whatever faults came between.
  const starts = new Map<number, { first: number; last: number }>();
  for (const r of runs) {
    const s = starts.get(r.task_id);
    starts.set(r.task_id, {
      first: Math.min(s?.first ?? r.started, r.started),
      last: Math.max(s?.last ?? r.started, r.started),
    });
  }
  const groups = new Map<string, number[]>();
  for (const t of tasks) {
    if (t.order_group !== null && starts.has(Number(t.id)))
      groups.set(t.order_group, [...(groups.get(t.order_group) ?? []), Number(t.id)]);
  }
  for (const ids of groups.values()) {
    ids.sort((a, b) => a - b);
    for (let i = 1; i < ids.length; i++) {
      const [a, b] = [ids[i - 1] as number, ids[i] as number];
      const [sa, sb] = [starts.get(a), starts.get(b)];
      if (sa && sb && sb.first < sa.last) {
        violations.push({
          kind: "order",
          detail: `task ${b} started ${Math.round(sa.last - sb.first)} ms before the last run of task ${a}, queued ahead of it on its key`,
        });
      }
    }
  }

  // 3. No capped kind ran more than max_running runs at once (any keys).
  const { rows: caps } = await pool.query<{ kind: string; max_running: number }>(
    "select kind, max_running from holdfast.kinds where max_running is not null",
  );
  for (const cap of caps) {
    const peak = peakOpen(
      runs.filter((r) => r.kind === cap.kind),
      end,
    );
    if (peak.open > cap.max_running)
      violations.push({
        kind: "over-cap",
        detail: `kind ${cap.kind}: ${peak.open} runs at once at ${new Date(peak.at).toISOString()} (max_running ${cap.max_running})`,
      });
  }

  // 4. Every task ended exactly once: terminal state, and exactly one terminal attempt (a
  // crash counts as an attempt: the last one may be 'lost').
  let succeeded = 0;
  let deadLettered = 0;
  for (const t of tasks) {
    if (t.state === "succeeded") succeeded++;
    else if (t.state === "failed") deadLettered++;
    else {
      // Time in state and the key's progress tell slow (a key still moving: a backlog) from
      // stuck (a key that has not moved for the soak's bound).
      const idle =
        t.key_idle_s === null ? "never ran" : `last progressed ${secs(t.key_idle_s)} ago`;
      violations.push({
        kind: "not-ended",
        detail: `task ${t.id} is still ${t.state} (for ${secs(t.in_state_s)}); its key ${t.key} ${idle}`,
      });
      continue;
    }
    const terminal = t.succeeded + t.finals;
    if (terminal !== 1) {
      violations.push({
        kind: "ended-twice",
        detail: `task ${t.id} (${t.state}) has ${terminal} terminal attempts`,
      });
    }
  }
  // Runs that finished their work more than once for a task that succeeded: the completion
  // report of an earlier run was lost in a fault (at-least-once; not a violation).
  const succeededIds = new Set(
    tasks.filter((t) => t.state === "succeeded").map((t) => Number(t.id)),
  );
  const endedRuns = new Map<number, number>();
  for (const r of runs) {
    if (r.ended !== null && succeededIds.has(r.task_id))
      endedRuns.set(r.task_id, (endedRuns.get(r.task_id) ?? 0) + 1);
  }
  let reruns = 0;
  for (const n of endedRuns.values()) reruns += n - 1;
  return {
    tasks: tasks.length,
    succeeded,
    deadLettered,
    runs: runs.length,
    reruns,
    violations,
  };
}

const secs = (s: number | null) => `${Math.round(s ?? 0)} s`;

/** The most runs open at one instant, and when; a run that ends as another starts is not open. */
function peakOpen(runs: LogRun[], end: (r: LogRun) => number): { open: number; at: number } {
  const edges = runs.flatMap((r) => [
    { at: r.started, d: 1 },
    { at: end(r), d: -1 },
  ]);
  edges.sort((a, b) => a.at - b.at || a.d - b.d);
  let open = 0;
  let peak = { open: 0, at: 0 };
  for (const e of edges) {
    open += e.d;
    if (open > peak.open) peak = { open, at: e.at };
  }
  return peak;
}

/**
 * Sessions per worker once the faults are over: each live worker process holds one lock and
 * one LISTEN session (holdfast names them), whatever it went through. A reconnect that left a
 * session behind shows here.
 */
export async function extraSessions(pool: pg.Pool): Promise<Violation[]> {
  const rows = await sessionsOverOne(pool);
  return rows.map((r) => ({ kind: "extra-session", detail: `${r.n} sessions named ${r.app}` }));
}

async function sessionsOverOne(pool: pg.Pool): Promise<{ app: string; n: number }[]> {
  const { rows } = await pool.query<{ app: string; n: number }>(
    `select application_name as app, count(*)::int as n from pg_stat_activity
     where application_name like 'holdfast:%' and datname = current_database()
     group by 1 having count(*) > 1 order by 1`,
  );
  return rows;
}

/**
 * Samples the sessions per worker during the soak: a worker may briefly have two sessions of
 * one kind (a partitioned worker opens a new one while the server still keeps the old backend),
 * but never for longer than the server's release bound (`boundMs`, from the TCP settings every
 * holdfast session gets), plus one sampling step. `stop()` returns the violations seen.
 */
export function watchSessions(
  pool: pg.Pool,
  boundMs: number,
  everyMs = 1_000,
): { seen(): Violation[]; stop(): Promise<Violation[]> } {
  const since = new Map<string, number>(); // session name -> first sample with more than one
  const reported = new Set<string>();
  const violations: Violation[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      const now = Date.now();
      const over = await sessionsOverOne(pool).catch(() => undefined); // Postgres restarting
      if (over) {
        const names = new Set(over.map((r) => r.app));
        for (const name of since.keys()) if (!names.has(name)) since.delete(name);
        for (const r of over) {
          const first = since.get(r.app) ?? now;
          since.set(r.app, first);
          if (now - first > boundMs + everyMs && !reported.has(r.app)) {
            reported.add(r.app);
            violations.push({
              kind: "extra-session",
              detail: `${r.n} sessions named ${r.app} for ${now - first} ms (bound ${boundMs} ms)`,
            });
          }
        }
      }
      await new Promise((r) => setTimeout(r, everyMs));
    }
  })();
  return {
    seen: () => [...violations],
    stop: async () => {
      running = false;
      await loop;
      return violations;
    },
  };
}
