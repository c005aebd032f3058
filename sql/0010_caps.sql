-- Cluster-wide concurrency caps per kind (kinds.max_running; null = no cap).
-- A capped kind has max_running slots, each a session advisory lock in the two-int key space
-- (_slot_class(kind), slot number). A claim of the kind takes a free slot on the claiming
-- session and holds it for the run (a batch is one run: one slot); it is released with the
-- key when the run ends, and by Postgres when the holder's session ends: no lease, no
-- timeout. A held slot is exclusive, so at most max_running runs hold one at any time.

alter table holdfast.kinds add column max_running int check (max_running >= 1);
-- The slot a running task's run holds (null: an uncapped kind).
alter table holdfast.tasks add column slot int;
-- Running tasks holding a slot, per kind: how full a kind is, and which slots this session holds.
create index tasks_slots on holdfast.tasks (kind, slot) where state = 'running' and slot is not null;

-- The first int of a kind's slot locks. The two-int space holds only holdfast's own locks
-- (migration and leadership use class 1752132708), so a kind never maps there.
create function holdfast._slot_class(kind text) returns int
  language sql immutable strict parallel safe as $$
  select case when h = 1752132708 then h + 1 else h end
  from (select (hashtextextended(kind, 4714072861207531113) >> 32)::int as h) x
$$;

-- Kinds a claim may take from, with the room left under each one's cap (null: uncapped).
-- A full kind is left out, so its ready keys cost a claim of other kinds nothing. The count
-- includes runs whose holder just died: their room comes back when the sweep requeues them
-- (and notifies), within the sweep interval.
create function holdfast._claimable(kinds text[]) returns table (kind text, room int)
  language sql stable as $$
  select x.kind, x.max_running - x.used from (
    select kd.kind, k.max_running, case when k.max_running is null then 0 else (
        select count(*) from holdfast.tasks t
        where t.kind = kd.kind and t.state = 'running' and t.slot is not null)::int end as used
    from (select distinct unnest(kinds)) as kd (kind)
    left join holdfast.kinds k on k.kind = kd.kind) x
  where x.max_running is null or x.max_running > x.used
$$;

-- Try-locks up to want free slots of a kind on this session. A session lock is re-entrant, so
-- the slots this session's runs already hold are skipped by their rows (not by pg_locks).
create function holdfast._take_slots(kind text, cap int, want int) returns int[]
  language plpgsql as $$
#variable_conflict use_column
declare
  v_class int := holdfast._slot_class(kind);
  v_mine int[];
  v_got int[] := '{}';
begin
  select coalesce(array_agg(t.slot), '{}') into v_mine from holdfast.tasks t
  where t.kind = _take_slots.kind and t.state = 'running' and t.slot is not null
    and t.holder_pid = pg_backend_pid();
  for s in 1..cap loop
    exit when cardinality(v_got) >= want;
    continue when s = any (v_mine);
    if pg_try_advisory_lock(v_class, s) then
      v_got := v_got || s;
    end if;
  end loop;
  return v_got;
end $$;

-- Slots for the keys a claim locked, in their order: null for an uncapped kind, a slot
-- number, or 0 when the kind had no free slot left. Null when no kind is capped.
create function holdfast._claim_slots(keys text[], kinds text[]) returns int[]
  language plpgsql as $$
declare
  r record;
  v_got int[];
  v_slots int[];
begin
  for r in
    select g.kind, kd.max_running, array_agg(g.ord order by g.ord) as ords
    from unnest(kinds) with ordinality as g (kind, ord)
    join holdfast.kinds kd on kd.kind = g.kind
    where kd.max_running is not null
    group by g.kind, kd.max_running
  loop
    v_slots := coalesce(v_slots, array_fill(null::int, array[cardinality(keys)]));
    v_got := holdfast._take_slots(r.kind, r.max_running, cardinality(r.ords));
    for i in 1..cardinality(r.ords) loop
      v_slots[r.ords[i]] := coalesce(v_got[i], 0);
    end loop;
  end loop;
  return v_slots;
end $$;

-- claim, _finish_many and sweep as in 0008, with the steps marked "Caps".
create or replace function holdfast.claim(kinds text[], worker text, max_tasks int default 1,
                                          max_keys int default null)
returns setof holdfast.tasks
  language plpgsql set plan_cache_mode = force_generic_plan as $$
#variable_conflict use_column
declare
  v_keys text[];
  v_fences bigint[];
  v_kinds text[];
  v_slots int[];
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
    select k.key, k.lock_id, k.fence, k.head_kind, k.head_priority, k.head_run_at, k.head_id
    from holdfast._claimable(kinds) as kd (kind, room)
    cross join lateral (
      select k.key, k.lock_id, k.fence, k.head_kind, k.head_priority, k.head_run_at, k.head_id
      from holdfast.keys k
      where k.head_kind = kd.kind and k.head_id is not null and not k.busy
        and k.head_run_at <= now()
      order by k.head_priority, k.head_run_at, k.head_id
      limit least(max_tasks, coalesce(max_keys, max_tasks), kd.room)
      for update of k skip locked
    ) k
    order by k.head_priority, k.head_run_at, k.head_id
    limit least(max_tasks, coalesce(max_keys, max_tasks))
  )
  select array_agg(c.key order by c.head_priority, c.head_run_at, c.head_id),
         array_agg(holdfast._next_fence(c.fence) order by c.head_priority, c.head_run_at, c.head_id),
         array_agg(c.head_kind order by c.head_priority, c.head_run_at, c.head_id)
  into v_keys, v_fences, v_kinds
  from c where pg_try_advisory_lock(c.lock_id);
  if v_keys is null then
    return;
  end if;

  -- Caps: a key of a capped kind also needs one of its kind's slots (see _take_slots); a key
  -- left without one (the kind filled up since _claimable looked) is unlocked and skipped.
  v_slots := holdfast._claim_slots(v_keys, v_kinds);
  if v_slots is not null then
    perform pg_advisory_unlock(k.lock_id) from holdfast.keys k
    join unnest(v_keys, v_slots) s (key, slot) on k.key = s.key where s.slot = 0;
  end if;

  return query
  with g as (
    select g.key, g.fence, g.slot, g.ord, k.head_id, k.head_kind,
      least(kd.batch_max, max_tasks) as batch
    from unnest(v_keys, v_fences, v_slots) with ordinality as g (key, fence, slot, ord)
    join holdfast.keys k on k.key = g.key
    join holdfast.kinds kd on kd.kind = k.head_kind
    where coalesce(g.slot, -1) <> 0
  ),
  -- Per key: the head and the tasks of its kind right behind it, in the key's order (FIFO per
  -- key), bounded by the batch size: no scan over the key's other pending tasks.
  p as (
    select g.key, g.fence, g.slot, g.ord, q.id, q.n
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
      started_at = now(), cancel_requested = false, slot = p.slot
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
  from holdfast.keys k where k.key = any (v_keys) and not k.busy
    and coalesce(v_slots[array_position(v_keys, k.key)], -1) <> 0;
  -- Caps: and its slot, telling the kind's waiting workers.
  perform pg_advisory_unlock(holdfast._slot_class(s.kind), s.slot), pg_notify('holdfast', s.kind)
  from unnest(v_keys, v_kinds, v_slots) s (key, kind, slot)
  join holdfast.keys k on k.key = s.key where s.slot > 0 and not k.busy;
end $$;

create or replace function holdfast._finish_many(
  ids bigint[], fences bigint[], outcome text, error jsonb, retry_in interval
) returns setof bigint
  language plpgsql set plan_cache_mode = force_generic_plan as $$
#variable_conflict use_column
declare
  v_keys text[];
  v_slots jsonb;
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
    select t.id, t.key, t.kind, t.attempt, t.fence, t.worker, t.holder_pid, t.started_at, t.slot,
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
         (select array_agg(d.id) from d where not exists (select 1 from t where t.id = d.id)),
         (select jsonb_agg(distinct jsonb_build_array(t.key, t.kind, t.slot)) from t
          where t.slot is not null)
  into v_keys, v_rejected, v_slots;

  if v_keys is not null then
    -- requeue: each key's next task waits behind keys that were ready before this run ended
    -- (a released task keeps its place).
    perform holdfast._refresh_keys(v_keys, _finish_many.outcome <> 'released');
    -- A key stays locked while another task of it still runs here (the rest of a batch).
    perform pg_advisory_unlock(k.lock_id) from holdfast.keys k
    where k.key = any (v_keys) and not k.busy;
    -- Caps: a run's slot is free once its key is (the run ended, the whole batch); the
    -- kind's workers that found it full sleep without a timer, so tell them.
    perform pg_advisory_unlock(holdfast._slot_class(s->>1), (s->>2)::int), pg_notify('holdfast', s->>1)
    from jsonb_array_elements(v_slots) s join holdfast.keys k on k.key = s->>0
    where not k.busy;
    -- Also when the next task is due later (a retry's backoff, a minimum interval): idle
    -- workers then set their timers for it, as for a delayed enqueue. Without this, only this
    -- worker would know, and if it stopped, the task would wait for the others' rescan.
    perform pg_notify('holdfast', k.head_kind) from holdfast.keys k
    where k.key = any (v_keys) and k.head_id is not null and not k.busy;
  end if;
  return query select unnest(v_rejected);
end $$;

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
      -- Caps: the dead holder's slot was freed with its session; the kind's workers that
      -- found it full wait for this.
      if t.slot is not null then
        perform pg_notify('holdfast', t.kind);
      end if;
      n := n + 1;
    end if;
    perform pg_advisory_unlock(r.lock_id);
  end loop;
  return n;
end $$;

-- The earliest time a not-yet-ready task of these kinds becomes ready (for a worker's timer):
-- one index probe per kind. A full kind is left out: its ready keys are no reason to poll; a
-- freed slot notifies.
create or replace function holdfast.next_run_at(kinds text[]) returns timestamptz
  language sql stable as $$
  select min(x.at) from holdfast._claimable(kinds) as kd (kind, room)
  cross join lateral (
    select k.head_run_at as at from holdfast.keys k
    where k.head_kind = kd.kind and k.head_id is not null and not k.busy
    order by k.head_run_at limit 1) x
$$;

-- max_running: the kind's cap (null keeps the stored value, 0 removes the cap).
drop function holdfast.define_kind(text, int, interval, int);
create function holdfast.define_kind(
  kind text,
  max_attempts int default null,
  min_interval interval default null,
  batch_max int default null,
  max_running int default null
) returns void
  language plpgsql as $$
#variable_conflict use_column
begin
  if kind is null or kind !~ '^[A-Za-z0-9_.:-]{1,100}$' then
    perform holdfast._raise('HF002', format('holdfast: invalid kind name %L', define_kind.kind),
      'a kind is 1 to 100 characters of letters, digits, _ . : -');
  end if;
  if define_kind.max_attempts is not null and define_kind.max_attempts < 1 then
    perform holdfast._raise('HF002', 'holdfast: max_attempts must be at least 1');
  end if;
  if define_kind.min_interval is not null and define_kind.min_interval < interval '0' then
    perform holdfast._raise('HF002', 'holdfast: min_interval must not be negative');
  end if;
  if define_kind.batch_max is not null and define_kind.batch_max not between 1 and 1000 then
    perform holdfast._raise('HF002', 'holdfast: batch_max must be between 1 and 1000');
  end if;
  if define_kind.max_running is not null and define_kind.max_running not between 0 and 10000 then
    perform holdfast._raise('HF002', 'holdfast: max_running must be between 1 and 10000 (0: no cap)');
  end if;
  insert into holdfast.kinds as k (kind, max_attempts, min_interval, batch_max, max_running)
  values (define_kind.kind, coalesce(define_kind.max_attempts, 5),
          coalesce(define_kind.min_interval, interval '0'), coalesce(define_kind.batch_max, 1),
          nullif(define_kind.max_running, 0))
  on conflict (kind) do update set
    max_attempts = coalesce(define_kind.max_attempts, k.max_attempts),
    min_interval = coalesce(define_kind.min_interval, k.min_interval),
    batch_max = coalesce(define_kind.batch_max, k.batch_max),
    max_running = case when define_kind.max_running is null then k.max_running
                       else nullif(define_kind.max_running, 0) end;
  -- A raised or removed cap makes room: the kind's workers may be waiting for a slot.
  if define_kind.max_running is not null then
    perform pg_notify('holdfast', define_kind.kind);
  end if;
end $$;

alter function holdfast.claim(text[], text, int, int)
  security definer set search_path = pg_catalog, pg_temp;
alter function holdfast.sweep() security definer set search_path = pg_catalog, pg_temp;
alter function holdfast.next_run_at(text[]) security definer set search_path = pg_catalog, pg_temp;
alter function holdfast.define_kind(text, int, interval, int, int)
  security definer set search_path = pg_catalog, pg_temp;
revoke all on all functions in schema holdfast from public;
do $$
begin
  if exists (select 1 from pg_roles where rolname = 'holdfast_worker') then
    grant execute on function holdfast.define_kind(text, int, interval, int, int) to holdfast_worker;
  end if;
end $$;
