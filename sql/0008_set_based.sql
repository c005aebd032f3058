-- Set-based claim and completion: a fixed number of statements per call, whatever the number
-- of keys and tasks, where 0003/0004 ran several statements per key.
-- attempts now holds ended attempts only, written when the attempt ends: a running attempt is
-- its task row (state 'running', attempt, fence, worker, started_at). One write less per task.
-- force_generic_plan: plpgsql otherwise re-plans these parameterized statements on every call
-- (a custom plan), which cost about 0.35 ms of a 0.85 ms claim. Their plans do not depend on
-- the values (bench/claim-scale.ts checks the claim stays flat up to 1M pending tasks).

-- The state a task goes to when its attempt ends (for _finish_many and sweep).
create function holdfast._next_state(outcome text, cancel_requested boolean, attempt int,
                                     max_attempts int) returns text
  language sql immutable as $$
  select case
    when outcome = 'succeeded' then 'succeeded'
    when cancel_requested then 'cancelled'
    when attempt >= max_attempts then 'failed'
    else 'pending' end
$$;

-- Recomputes the head (next pending task) and busy flag of each key. The caller holds the key
-- rows' locks, so this statement's snapshot sees every committed change to their tasks.
-- head_run_at is when the head may start: its run_at, pushed by the kind's minimum interval,
-- and with requeue (a run of the key just ended) pushed to now, so the key goes behind keys
-- that were already waiting: a busy key cannot starve the others.
-- While a key is busy its head is not read (claim skips busy keys) and may be stale; every
-- path that can clear busy recomputes it here.
create function holdfast._refresh_keys(ks text[], requeue boolean default false) returns void
  language plpgsql set plan_cache_mode = force_generic_plan as $$
begin
  update holdfast.keys k set
    busy = exists (select 1 from holdfast.tasks t where t.key = k.key and t.state = 'running'),
    (head_id, head_kind, head_priority, head_run_at) = (
      select t.id, t.kind, t.priority,
        greatest(t.run_at, kk.last_succeeded_at + kd.min_interval, case when requeue then now() end)
      from holdfast.tasks t
      join holdfast.kinds kd on kd.kind = t.kind
      left join holdfast.key_kinds kk on kk.key = t.key and kk.kind = t.kind
        and kd.min_interval > interval '0'
      where t.key = k.key and t.state = 'pending'
      order by t.priority, t.run_at, t.id
      limit 1)
  where k.key = any (ks);
end $$;

-- The one-key form used by cancel and retry (its fence argument was only used by claim).
drop function holdfast._refresh_key(text, boolean, bigint);
create function holdfast._refresh_key(k text, requeue boolean default false) returns void
  language plpgsql as $$
begin
  perform holdfast._refresh_keys(array[k], requeue);
end $$;

-- Claims up to max_tasks tasks from at most max_keys keys (null: no key limit). Each claimed
-- key yields its head task, and for a batch kind (batch_max > 1) the tasks of that kind that
-- directly follow it in the key's order, up to batch_max: one run, one fence. Keys are taken
-- in (priority, ready time, id) order of their heads; a key whose run just ended is ready
-- again only from that moment, so it goes behind keys that were waiting (fairness).
create or replace function holdfast.claim(kinds text[], worker text, max_tasks int default 1,
                                          max_keys int default null)
returns setof holdfast.tasks
  language plpgsql set plan_cache_mode = force_generic_plan as $$
#variable_conflict use_column
declare
  v_keys text[];
  v_fences bigint[];
begin
  if max_tasks is null or max_tasks < 1 or (max_keys is not null and max_keys < 1) then
    return;
  end if;
  -- A lost claim commit is harmless: the lock dies with the session in a crash, and fences
  -- stay monotonic (see _next_fence). This keeps the wake path free of a WAL flush.
  perform set_config('synchronous_commit', 'off', true);

  -- Ready keys, row-locked before their advisory lock is tried: the row lock re-checks them
  -- (advisory locks ignore MVCC) and SKIP LOCKED never waits for an enqueue or a handler's
  -- assert_fence. The LIMIT comes first, so each key is tried once and every key locked here
  -- is used below. A key this session holds is busy, so no lock is taken twice. (With several
  -- kinds, up to max_keys rows per kind are row-locked; the unused ones only until commit.)
  -- Per kind (keys_ready_kind), so that ready keys of kinds this worker does not handle are
  -- never read: a worker's claim costs the same with none or a million of them. A key appears
  -- once: kinds are deduplicated, and a key has one head kind.
  with c as materialized (
    select k.key, k.lock_id, k.fence, k.head_priority, k.head_run_at, k.head_id
    from (select distinct unnest(kinds)) as kd (kind)
    cross join lateral (
      select k.key, k.lock_id, k.fence, k.head_priority, k.head_run_at, k.head_id
      from holdfast.keys k
      where k.head_kind = kd.kind and k.head_id is not null and not k.busy
        and k.head_run_at <= now()
      order by k.head_priority, k.head_run_at, k.head_id
      limit least(max_tasks, coalesce(max_keys, max_tasks))
      for update of k skip locked
    ) k
    order by k.head_priority, k.head_run_at, k.head_id
    limit least(max_tasks, coalesce(max_keys, max_tasks))
  )
  select array_agg(c.key order by c.head_priority, c.head_run_at, c.head_id),
         array_agg(holdfast._next_fence(c.fence) order by c.head_priority, c.head_run_at, c.head_id)
  into v_keys, v_fences
  from c where pg_try_advisory_lock(c.lock_id);
  if v_keys is null then
    return;
  end if;

  return query
  with g as (
    select g.key, g.fence, g.ord, k.head_id, k.head_kind, least(kd.batch_max, max_tasks) as batch
    from unnest(v_keys, v_fences) with ordinality as g (key, fence, ord)
    join holdfast.keys k on k.key = g.key
    join holdfast.kinds kd on kd.kind = k.head_kind
  ),
  -- Per key: the head and the tasks of its kind right behind it, in the key's order (FIFO per
  -- key), bounded by the batch size: no scan over the key's other pending tasks.
  p as (
    select g.key, g.fence, g.ord, q.id, q.n
    from g cross join lateral (
      select s.id, s.n from (
        select t.id, row_number() over w as n,
          bool_and(t.kind = g.head_kind and (t.id = g.head_id or t.run_at <= now())) over w as ok
        from (select * from holdfast.tasks t where t.key = g.key and t.state = 'pending'
              order by t.priority, t.run_at, t.id limit g.batch) t
        window w as (order by t.priority, t.run_at, t.id)
      ) s where s.ok
    ) q
    order by g.ord, q.n
    limit max_tasks
  ),
  upd as (
    update holdfast.tasks u set
      state = 'running', attempt = u.attempt + 1, fence = p.fence, worker = claim.worker,
      holder_pid = pg_backend_pid(), holder_started = holdfast._session_started(),
      started_at = now(), cancel_requested = false
    from p where u.id = p.id
    returning u.*
  ),
  kup as (
    update holdfast.keys k set busy = true, fence = p.fence
    from (select distinct p.key, p.fence from p) p where k.key = p.key
  )
  select upd.* from upd join p on p.id = upd.id order by p.ord, p.n;

  -- A key locked above that yielded no task (its head changed under a concurrent commit, or
  -- max_tasks ran out): give it back and repair its head.
  perform pg_advisory_unlock(k.lock_id), holdfast._refresh_key(k.key)
  from holdfast.keys k where k.key = any (v_keys) and not k.busy;
end $$;

-- Ends attempts. outcome: 'succeeded' | 'failed' | 'released' (claimed but never started: back
-- to pending in its place, the attempt not counted). Returns the ids whose report was rejected,
-- changing nothing for them: the task is not running under this fence in this session (a
-- newer claim exists, or the caller lost its session), so a late report of a run that lost
-- its lock is never recorded.
create function holdfast._finish_many(
  ids bigint[], fences bigint[], outcome text, error jsonb, retry_in interval
) returns setof bigint
  language plpgsql set plan_cache_mode = force_generic_plan as $$
#variable_conflict use_column
declare
  v_keys text[];
  v_rejected bigint[];
  v_missing bigint;
  v_pid int := pg_backend_pid();
  v_started timestamptz := holdfast._session_started();
begin
  select i into v_missing from unnest(ids) i
  where not exists (select 1 from holdfast.tasks t where t.id = i) limit 1;
  if found then
    perform holdfast._raise('HF003', format('holdfast: no task with id %s', v_missing));
  end if;
  -- Key rows first (lock order everywhere: key row, then task rows), in key order so that two
  -- callers never deadlock. The statements below then see every committed change.
  perform 1 from holdfast.keys k
  where k.key in (select t.key from holdfast.tasks t where t.id = any (ids))
  order by k.key for no key update;

  with d as (select * from unnest(ids, fences) as d (id, fence)),
  -- By primary key (lateral): the running-tasks index holds an entry for every past run
  -- until vacuum, which a scan of it would visit.
  t as (
    select t.id, t.key, t.kind, t.attempt, t.fence, t.worker, t.holder_pid, t.started_at,
      case when _finish_many.outcome = 'released' then 'pending'
        else holdfast._next_state(_finish_many.outcome, t.cancel_requested, t.attempt, t.max_attempts)
      end as next
    from d cross join lateral (select * from holdfast.tasks t where t.id = d.id) t
    where t.fence = d.fence and t.state = 'running' and t.holder_pid = v_pid
      and t.holder_started = v_started
  ),
  upd as (
    update holdfast.tasks u set
      state = t.next,
      attempt = case when _finish_many.outcome = 'released' then u.attempt - 1 else u.attempt end,
      run_at = case when t.next <> 'pending' or _finish_many.outcome = 'released' then u.run_at
                    else now() + coalesce(retry_in, holdfast._backoff(t.attempt, t.fence)) end,
      finished_at = case when t.next = 'pending' then null else now() end,
      last_error = coalesce(_finish_many.error, u.last_error)
    from t where u.id = t.id
  ),
  att as (
    insert into holdfast.attempts as a (task_id, attempt, fence, worker, pid, started_at,
                                        finished_at, outcome, error)
    select t.id, t.attempt, t.fence, t.worker, t.holder_pid, t.started_at, now(),
      case when t.next = 'cancelled' then 'cancelled' else _finish_many.outcome end,
      _finish_many.error
    from t where _finish_many.outcome <> 'released'
    -- An attempt that was running when this migration ran has its row already.
    on conflict (task_id, attempt) do update set finished_at = excluded.finished_at,
      outcome = excluded.outcome, error = excluded.error
  ),
  -- A success starts the kind's minimum interval on this key (read by the key's head).
  kk as (
    insert into holdfast.key_kinds as kk (key, kind, last_succeeded_at)
    select distinct t.key, t.kind, now() from t join holdfast.kinds kd on kd.kind = t.kind
    where t.next = 'succeeded' and kd.min_interval > interval '0'
    on conflict (key, kind) do update set last_succeeded_at = excluded.last_succeeded_at
  )
  select (select array_agg(distinct t.key) from t),
         (select array_agg(d.id) from d where not exists (select 1 from t where t.id = d.id))
  into v_keys, v_rejected;

  if v_keys is not null then
    -- requeue: each key's next task waits behind keys that were ready before this run ended
    -- (a released task keeps its place).
    perform holdfast._refresh_keys(v_keys, _finish_many.outcome <> 'released');
    -- A key stays locked while another task of it still runs here (the rest of a batch).
    perform pg_advisory_unlock(k.lock_id) from holdfast.keys k
    where k.key = any (v_keys) and not k.busy;
    -- Also when the next task is due later (a retry's backoff, a minimum interval): idle
    -- workers then set their timers for it, as for a delayed enqueue. Without this, only this
    -- worker would know, and if it stopped, the task would wait for the others' rescan.
    perform pg_notify('holdfast', k.head_kind) from holdfast.keys k
    where k.key = any (v_keys) and k.head_id is not null and not k.busy;
  end if;
  return query select unnest(v_rejected);
end $$;

create or replace function holdfast._finish(
  task_id bigint, fence bigint, outcome text, error jsonb, retry_in interval
) returns boolean
  language sql as $$
  select not exists (select 1 from holdfast._finish_many(array[task_id], array[fence], outcome,
    error, retry_in))
$$;

create or replace function holdfast.complete_many(ids bigint[], fences bigint[])
returns setof bigint
  language sql as $$
  select holdfast._finish_many(ids, fences, 'succeeded', null, null)
$$;

drop function holdfast._release(text);

-- Gives back tasks this session claimed but did not start (a worker's prefetched tasks when it
-- stops): pending again in their place, their attempt not counted, their keys unlocked.
-- Returns the ids that were not running under this fence in this session.
create function holdfast.release(ids bigint[], fences bigint[]) returns setof bigint
  language sql as $$
  select holdfast._finish_many(ids, fences, 'released', null, null)
$$;

-- As in 0005, with the next state decided by _next_state.
create or replace function holdfast.sweep() returns int
  language plpgsql as $$
#variable_conflict use_column
declare
  r record;
  t holdfast.tasks;
  v_state text;
  n int := 0;
begin
  for r in
    select o.id, o.key, o.fence, holdfast.lock_id(o.key) as lock_id
    from holdfast.orphans o where o.holder_pid <> pg_backend_pid()
  loop
    continue when not pg_try_advisory_lock(r.lock_id);
    perform 1 from holdfast.keys k where k.key = r.key for no key update;
    select * into t from holdfast.tasks where id = r.id;
    if t.state = 'running' and t.fence = r.fence then
      v_state := holdfast._next_state('lost', t.cancel_requested, t.attempt, t.max_attempts);
      update holdfast.tasks u set
        state = v_state,
        run_at = case when v_state = 'pending' then now() else u.run_at end,
        finished_at = case when v_state = 'pending' then null else now() end,
        last_error = jsonb_build_object('message', 'holder session ended during the run')
      where u.id = t.id;
      insert into holdfast.attempts as a (task_id, attempt, fence, worker, pid, started_at,
                                          finished_at, outcome, error)
      values (t.id, t.attempt, t.fence, t.worker, t.holder_pid, t.started_at, now(), 'lost',
              jsonb_build_object('message', 'holder session ended during the run'))
      on conflict (task_id, attempt) do update set finished_at = excluded.finished_at,
        outcome = excluded.outcome, error = excluded.error;
      perform holdfast._refresh_key(t.key);
      perform holdfast._notify_if_ready(t.key);
      n := n + 1;
    end if;
    perform pg_advisory_unlock(r.lock_id);
  end loop;
  return n;
end $$;

-- CREATE OR REPLACE reset these entry points' attributes: restore what 0006 set.
alter function holdfast.claim(text[], text, int, int)
  security definer set search_path = pg_catalog, pg_temp;
alter function holdfast.complete_many(bigint[], bigint[])
  security definer set search_path = pg_catalog, pg_temp;
alter function holdfast.sweep() security definer set search_path = pg_catalog, pg_temp;
alter function holdfast.release(bigint[], bigint[])
  security definer set search_path = pg_catalog, pg_temp;
revoke all on function holdfast.release(bigint[], bigint[]) from public;
do $$
begin
  if exists (select 1 from pg_roles where rolname = 'holdfast_worker') then
    grant execute on function holdfast.release(bigint[], bigint[]) to holdfast_worker;
  end if;
end $$;

-- inspect counts open tasks per kind (pending, running, failed): index only those, so that a
-- completion does not add an index entry. (Built in the migration's transaction: on a large
-- tasks table this takes a while and blocks writes to it meanwhile.)
drop index holdfast.tasks_kind_state;
create index tasks_kind_open on holdfast.tasks (kind, state)
  where state in ('pending', 'running', 'failed');

-- Ready keys by kind first: claim and next_run_at read only the kinds they are asked for.
drop index holdfast.keys_ready;
create index keys_ready_kind on holdfast.keys (head_kind, head_priority, head_run_at, head_id)
  where head_id is not null and not busy;
drop index holdfast.keys_next_run_at;
create index keys_next_run_at on holdfast.keys (head_kind, head_run_at)
  where head_id is not null and not busy;

-- The earliest time a not-yet-ready task of these kinds becomes ready (for a worker's timer):
-- one index probe per kind.
create or replace function holdfast.next_run_at(kinds text[]) returns timestamptz
  language sql stable as $$
  select min(x.at) from (select distinct unnest(kinds)) as kd (kind)
  cross join lateral (
    select k.head_run_at as at from holdfast.keys k
    where k.head_kind = kd.kind and k.head_id is not null and not k.busy
    order by k.head_run_at limit 1) x
$$;
alter function holdfast.next_run_at(text[]) security definer set search_path = pg_catalog, pg_temp;
