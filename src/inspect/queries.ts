// Read-only SQL of the lock inspector. Relations read (grant these to an observer role):
// holdfast.keys, holdfast.tasks, holdfast.kinds, holdfast.schedules, holdfast.schedule_ticks,
// holdfast.orphans (view), pg_locks, pg_stat_activity, pg_database, and settings through current_setting(). No function of the
// holdfast schema is called and no lock is taken, so a role with SELECT rights only works.
// Without pg_read_all_stats, Postgres hides client_addr and query_start of other roles'
// sessions: those fields are null, everything else stays exact.

/** Advisory locks of the current database taken with a bigint key (objsubid 1), as that key. */
const advisoryInThisDb = `
  l.locktype = 'advisory' and l.objsubid = 1
  and l.database = (select oid from pg_database where datname = current_database())`;
const lockKey = "((l.classid::bigint << 32) | l.objid::bigint)";

/** $1 key filter (null = all), $2 kind filter (null = all). */
export const holdersSql = `
select k.key, t.kind, t.id::text as task_id, t.attempt, t.max_attempts, t.fence::text as fence,
  t.worker, l.pid, a.application_name, host(a.client_addr) as client_addr,
  (extract(epoch from now() - coalesce(t.started_at, a.query_start)) * 1000)::float8 as held_for_ms,
  -- The task's checkpoint (ctx.checkpoint): its progress and note when it is an object, and
  -- its age, whichever run wrote it (a resumed run shows where it resumed from).
  case when jsonb_typeof(t.checkpoint -> 'progress') = 'number'
    then (t.checkpoint ->> 'progress')::float8 end as progress,
  case when jsonb_typeof(t.checkpoint -> 'note') = 'string' then t.checkpoint ->> 'note' end as note,
  (extract(epoch from now() - t.checkpoint_at) * 1000)::float8 as checkpoint_age_ms,
  t.checkpoint_fence = t.fence as checkpointed_this_run
from pg_locks l
join holdfast.keys k on k.lock_id = ${lockKey}
left join pg_stat_activity a on a.pid = l.pid
left join lateral (
  select * from holdfast.tasks t
  where t.key = k.key and t.state = 'running' and t.holder_pid = l.pid
  order by t.id limit 1) t on true
where ${advisoryInThisDb} and l.granted
  and ($1::text is null or k.key = $1) and ($2::text is null or t.kind = $2)
order by held_for_ms desc nulls last, k.key`;

/** Sessions blocked in pg_advisory_lock on a holdfast key, and the pids blocking them. */
export const waitersSql = `
select k.key, l.pid, a.application_name, host(a.client_addr) as client_addr,
  (extract(epoch from now() - a.query_start) * 1000)::float8 as waiting_ms,
  pg_blocking_pids(l.pid) as blocked_by
from pg_locks l
join holdfast.keys k on k.lock_id = ${lockKey}
left join pg_stat_activity a on a.pid = l.pid
where ${advisoryInThisDb} and not l.granted
  and ($1::text is null or k.key = $1)
  and ($2::text is null or exists (
    select 1 from holdfast.tasks t where t.key = k.key and t.kind = $2 and t.state <> 'succeeded'))
order by waiting_ms desc nulls last, k.key`;

/**
 * Running tasks whose holder no longer holds their key's lock (holdfast.orphans: its session
 * ended, or a pooler reset it, the backend alive) and whose key lock nobody holds: the sweeper
 * of a live worker requeues them within its sweep interval.
 */
export const orphansSql = `
select o.key, o.kind, o.id::text as task_id, o.attempt, o.fence::text as fence, o.worker,
  o.holder_pid, (extract(epoch from now() - o.started_at) * 1000)::float8 as running_for_ms
from holdfast.orphans o
join holdfast.keys k on k.key = o.key
where not exists (
    select 1 from pg_locks l where ${advisoryInThisDb} and l.granted and ${lockKey} = k.lock_id)
  and ($1::text is null or o.key = $1) and ($2::text is null or o.kind = $2)
order by o.started_at, o.id`;

/**
 * Per kind: ready, running, delayed and dead-lettered tasks, the oldest ready task's wait, and
 * for a capped kind its slots held now (two-int advisory locks: the kind's class, slot 1..cap;
 * the class is holdfast._slot_class(kind), written out here so no function is called).
 */
export const queueSql = `
select kd.kind, kd.max_running,
  case when kd.max_running is null then null else (
    select count(*) from pg_locks l
    where l.locktype = 'advisory' and l.objsubid = 2 and l.granted
      and l.database = (select oid from pg_database where datname = current_database())
      and l.objid::bigint between 1 and kd.max_running
      and l.classid::bigint = (select case when h = 1752132708 then h + 1 else h end
        from (select (hashtextextended(kd.kind, 4714072861207531113) >> 32)::int as h) x)::bigint
        & 4294967295) end::int as slots_used,
  count(t.id) filter (where t.state = 'pending' and t.run_at <= now())::int as pending,
  count(t.id) filter (where t.state = 'running')::int as running,
  count(t.id) filter (where t.state = 'pending' and t.run_at > now())::int as delayed,
  count(t.id) filter (where t.state = 'failed')::int as dead_lettered,
  (extract(epoch from now() - min(t.run_at) filter (where t.state = 'pending' and t.run_at <= now()))
    * 1000)::float8 as oldest_pending_ms
from holdfast.kinds kd
left join holdfast.tasks t on t.kind = kd.kind and t.state in ('pending', 'running', 'failed')
  and ($1::text is null or t.key = $1)
where $2::text is null or kd.kind = $2
group by kd.kind, kd.max_running
order by kd.kind`;

/**
 * Running tasks with their checkpoint's progress (null: none) and the seconds since the run
 * last checkpointed (since it started when it has not): a run that stopped progressing shows
 * a growing value. Read through the running-tasks index.
 */
export const runningProgressSql = `
select t.id::text as task_id, t.kind,
  case when jsonb_typeof(t.checkpoint -> 'progress') = 'number'
    then (t.checkpoint ->> 'progress')::float8 end as progress,
  greatest(0, extract(epoch from now() - coalesce(
    case when t.checkpoint_fence = t.fence then t.checkpoint_at end, t.started_at)))::float8
    as since_checkpoint_s
from holdfast.tasks t
where t.state = 'running'`;

/** Recurring schedules: next_at is the leader's; null until one has read the definition. */
export const schedulesSql = `
select s.name, s.kind, s.key, s.cron, s.timezone, s.next_at, s.covered_until, s.last_tick_at,
  s.last_task_id,
  (select round(extract(epoch from st.enqueued_at - st.tick_at) * 1000)::int8
   from holdfast.schedule_ticks st where st.name = s.name and st.tick_at = s.last_tick_at)
    as last_late_ms
from holdfast.schedules s
where ($1::text is null or s.key = $1) and ($2::text is null or s.kind = $2)
order by s.name`;

/**
 * The shared lock table holds max_locks_per_transaction × (max_connections +
 * max_prepared_transactions) entries for the whole server: every session's advisory locks
 * count against it, whatever their database.
 */
export const capacitySql = `
select
  current_setting('max_locks_per_transaction')::int as max_locks_per_transaction,
  current_setting('max_connections')::int as max_connections,
  current_setting('max_prepared_transactions')::int as max_prepared_transactions,
  (select count(*) from pg_locks l where l.locktype = 'advisory')::int as advisory_locks,
  (select count(*) from pg_locks l join holdfast.keys k on k.lock_id = ${lockKey}
    where ${advisoryInThisDb} and l.granted)::int as holdfast_locks,
  (select count(*) from pg_stat_activity a
    where a.datname = current_database()
      and a.application_name like 'holdfast:lock:%')::int as lock_sessions,
  (select count(*) from pg_stat_activity a
    where a.datname = current_database()
      and a.application_name like 'holdfast:listen:%')::int as listen_sessions,
  (select count(*) from pg_stat_activity a where a.backend_type = 'client backend')::int
    as client_connections,
  current_database() as database,
  (extract(epoch from clock_timestamp()) * 1000)::float8 as server_ms`;

// What happened, for the dashboard. Relations read: holdfast.tasks, holdfast.attempts,
// holdfast.keys (all granted to holdfast_observer). The last hour is read through
// attempts_finished (its window only); the page still reads it less often than the rest.

/** Start of the oldest of the last `$1` whole minutes (the current one included), epoch ms. */
export const activitySinceSql = `
select (extract(epoch from date_trunc('minute', now()) - ($1::int - 1) * interval '1 minute')
  * 1000)::float8 as since_ms`;

/**
 * Per kind and minute since $1 (epoch ms): attempts started (ended ones and the running ones,
 * whose attempt is the task row) and ended, by outcome; and per kind (what = 'runs') the
 * count and run time p50/p95 of the attempts that succeeded or failed. The window's attempts
 * are read and joined to their task once (`recent`, materialized: it is used twice).
 */
export const activitySql = `
with recent as (
  select t.kind, a.started_at, a.finished_at, a.outcome
  from holdfast.attempts a
  -- Each attempt's task by primary key (offset 0 keeps it a lookup): the planner would rather
  -- hash-join a scan of every task kept.
  cross join lateral (select t.kind from holdfast.tasks t where t.id = a.task_id offset 0) t
  -- An attempt ends after it starts: every attempt of the window ended in it. (The bound is
  -- written out, not read from a CTE, so the planner sees the window is small.)
  where a.finished_at >= to_timestamp($1::float8 / 1000)
  union all
  select t.kind, t.started_at, null, null
  from holdfast.tasks t
  where t.state = 'running' and t.started_at >= to_timestamp($1::float8 / 1000)
    and not exists (
      select 1 from holdfast.attempts a where a.task_id = t.id and a.attempt = t.attempt)
),
events as (
  select kind, started_at as at, 'started' as what from recent
  where started_at >= to_timestamp($1::float8 / 1000)
  union all
  select kind, finished_at, outcome from recent where outcome is not null
)
select kind, what, (extract(epoch from date_trunc('minute', at)) * 1000)::float8 as minute_ms,
  count(*)::int as n, null::float8 as p50_ms, null::float8 as p95_ms
from events
group by 1, 2, 3
union all
select kind, 'runs', null, count(*)::int,
  percentile_cont(0.5) within group (order by extract(epoch from finished_at - started_at)) * 1000,
  percentile_cont(0.95) within group (order by extract(epoch from finished_at - started_at)) * 1000
from recent
where outcome in ('succeeded', 'failed')
group by kind`;

/**
 * The $1 ready tasks waiting longest to start, whether their key is busy meanwhile, and the
 * key's head (the task that starts next on the key) when it is another one.
 */
export const waitingSql = `
select t.id::text as id, t.kind, t.key, t.attempt, t.max_attempts, k.busy,
  case when k.head_id <> t.id then k.head_id::text end as behind,
  (extract(epoch from now() - t.run_at) * 1000)::float8 as waiting_ms,
  t.last_error ->> 'message' as last_error
from holdfast.tasks t join holdfast.keys k on k.key = t.key
where t.state = 'pending' and t.run_at <= now()
order by t.run_at, t.id
limit $1`;

/** One task ($1) with its key's current fence. */
export const taskSql = `
select t.id::text as id, t.kind, t.key, t.payload, t.state, t.priority, t.run_at, t.place_at,
  t.attempt,
  t.max_attempts, t.dedupe_key, t.fence::text as fence, t.worker, t.holder_pid,
  t.cancel_requested, t.last_error, t.created_at, t.started_at, t.finished_at,
  k.fence::text as key_fence, k.busy as key_busy,
  t.checkpoint, t.checkpoint_at, t.checkpoint_fence::text as checkpoint_fence
from holdfast.tasks t join holdfast.keys k on k.key = t.key
where t.id = $1`;

/** Every ended attempt of task $1, with its fence: the task's fence history. */
export const taskAttemptsSql = `
select attempt, fence::text as fence, worker, pid, started_at, finished_at, outcome, error
from holdfast.attempts
where task_id = $1
order by attempt`;

/** The open tasks of key $1 in the order they start (running first, then the key's order), at most $2. */
export const keyTasksSql = `
select id::text as id, kind, state, priority, run_at, place_at, attempt, max_attempts
from holdfast.tasks
where key = $1 and state in ('pending', 'running')
order by state = 'running' desc, priority, place_at, id
limit $2`;

/** Whether this role may read the limits' tables (a SELECT-only role may lack them). */
export const limitsReadableSql = `
select has_table_privilege('holdfast.limits', 'select')
  and has_table_privilege('holdfast.kind_limits', 'select')
  and has_table_privilege('holdfast.limit_runs', 'select')
  and has_table_privilege('holdfast.keys', 'select') as ok`;

/**
 * Each limit and its window now, in plain SELECTs (as holdfast.limit_usage() computes it, for a
 * role without function rights): used = reserved (runs not charged yet) + charged; waiting:
 * ready heads of its kinds whose reservation does not fit now; room_at: when the oldest runs
 * have left enough room for its largest reservation, or the throttle's end (null: room now).
 */
export const limitsSql = `
select l.name, l.units, extract(epoch from l.per) * 1000 as per_ms, u.used, u.reserved, u.charged,
  u.runs, case when l.closed_until > now() then l.closed_until end as closed_until, k.kinds,
  coalesce((select sum((select count(*) from holdfast.keys ky
      where ky.head_kind = kl.kind and ky.head_id is not null and not ky.busy
        and ky.head_run_at <= now()))
    from holdfast.kind_limits kl where kl.limit_name = l.name
      and (u.used + kl.units > l.units or l.closed_until > now())), 0)::bigint as waiting,
  case when u.used + k.most <= l.units then case when l.closed_until > now() then l.closed_until end
    else greatest(l.closed_until, (
      select min(x.at + l.per) from (
        select lr.at, sum(coalesce(lr.charged, lr.reserved)) over (order by lr.at, lr.key, lr.fence)
          as gone
        from holdfast.limit_runs lr where lr.limit_name = l.name and lr.at > now() - l.per) x
      where u.used - x.gone + k.most <= l.units)) end as room_at
from holdfast.limits l
cross join lateral (
  select coalesce(sum(coalesce(lr.charged, lr.reserved)), 0)::bigint as used,
    coalesce(sum(lr.reserved) filter (where lr.charged is null), 0)::bigint as reserved,
    coalesce(sum(lr.charged), 0)::bigint as charged, count(*) as runs
  from holdfast.limit_runs lr where lr.limit_name = l.name and lr.at > now() - l.per) u
cross join lateral (
  select coalesce(array_agg(kl.kind order by kl.kind), '{}') as kinds,
    coalesce(max(kl.units), 0) as most
  from holdfast.kind_limits kl where kl.limit_name = l.name) k
order by l.name`;
