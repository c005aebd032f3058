-- Claim: take ready tasks, holding each key's session advisory lock in the caller's session
-- until complete()/fail()/release() (or until the session ends). Role holdfast_worker.

-- Claims up to max_tasks tasks from at most max_keys keys (null: no key limit). Each claimed
-- key yields its head task, and for a batch kind (batch_max > 1) the tasks of that kind that
-- directly follow it in the key's order, up to batch_max: one run, one fence. Keys are taken
-- in (priority, ready time, id) order of their heads; a key whose run just ended is ready
-- again only from that moment, so it goes behind keys that were waiting (fairness).
-- start_keys (null: all): the runs of the first start_keys keys start now; the rest are claimed
-- ahead (a worker's prefetch) with started_at null until _mark_started, and a claim ahead that
-- is lost with its session is given back by the sweep without counting an attempt.
create function holdfast.claim(kinds text[], worker text, max_tasks int default 1,
                               max_keys int default null, start_keys int default null)
returns setof holdfast.tasks
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp set plan_cache_mode = force_generic_plan as $$
#variable_conflict use_column
declare
  v_keys text[];
  v_fences bigint[];
  v_kinds text[];
  v_slots int[];
  v_capped boolean;
  v_limited boolean;
begin
  if max_tasks is null or max_tasks < 1 or (max_keys is not null and max_keys < 1) then
    return;
  end if;
  -- A lost claim commit is harmless: the lock dies with the session in a crash, and fences
  -- stay monotonic (see _next_fence). This keeps the wake path free of a WAL flush.
  perform set_config('synchronous_commit', 'off', true);
  -- Limits (api/37_limits.sql): kinds without room for a run now are left out.
  v_limited := exists (select 1 from holdfast.kind_limits kl where kl.kind = any (kinds));
  if v_limited then
    kinds := holdfast._admissible(kinds);
  end if;

  -- Ready keys, row-locked before their advisory lock is tried: the row lock re-checks them
  -- (advisory locks ignore MVCC) and SKIP LOCKED never waits for an enqueue or a handler's
  -- assert_fence. The LIMIT comes first, so each key is tried once and every key locked here
  -- is used below. A key this session holds is busy, so no lock is taken twice. (With several
  -- kinds, up to max_keys rows per kind are row-locked; the unused ones only until commit.)
  -- Per kind (keys_ready_kind), so that ready keys of kinds this worker does not handle are
  -- never read: a worker's claim costs the same with none or a million of them. A key appears
  -- once: kinds are deduplicated, and a key has one head kind.
  with c as materialized (
    select k.key, k.lock_id, k.fence, k.head_kind, k.head_priority, k.head_run_at, k.head_id,
      kd.room is not null as capped
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
         -- _next_fence, written out: one clock reading and one read of the floor per claim
         -- (in this statement's snapshot, as the key rows are), not a function call per key.
         array_agg(greatest(c.fence + 1, n.clock,
                            case when c.fence = 0 then (select f.fence + 1 from holdfast.fence_floor f) end)
                   order by c.head_priority, c.head_run_at, c.head_id),
         array_agg(c.head_kind order by c.head_priority, c.head_run_at, c.head_id),
         bool_or(c.capped)
  into v_keys, v_fences, v_kinds, v_capped
  from c cross join (select (extract(epoch from clock_timestamp()) * 1000)::bigint * 1024 as clock) n
  where pg_try_advisory_lock(c.lock_id);
  if v_keys is null then
    return;
  end if;

  -- Caps: a key of a capped kind also needs one of its kind's slots (see _take_slots); a key
  -- left without one (the kind filled up since _claimable looked) is unlocked and skipped.
  -- (Only when a capped kind is among them: the wake path of uncapped kinds skips the call.)
  if v_capped then
    v_slots := holdfast._claim_slots(v_keys, v_kinds);
  end if;
  -- Limits: each key's run reserves its kind's units, or gets slot 0 when one has no room.
  if v_limited then
    v_slots := holdfast._admit(v_keys, v_fences, v_kinds, v_slots);
  end if;
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
              order by t.priority, t.place_at, t.id limit g.batch) t
        window w as (order by t.priority, t.place_at, t.id)
      ) s where s.ok
    ) q
    order by g.ord, q.n
    limit max_tasks
  ),
  upd as (
    update holdfast.tasks u set
      state = 'running', attempt = u.attempt + 1, fence = p.fence, worker = claim.worker,
      holder_pid = pg_backend_pid(), holder_started = holdfast._session_started(),
      started_at = case when claim.start_keys is null or p.ord <= claim.start_keys then now() end,
      cancel_requested = false, slot = p.slot
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
  if v_limited then -- Limits: and its reservations
    perform holdfast._unadmit(v_keys, v_fences, v_kinds, v_slots);
  end if;
end $$;
select holdfast._grant('execute', 'function holdfast.claim(text[], text, int, int, int)',
  'holdfast_worker');

-- The earliest time a not-yet-ready task of these kinds becomes ready (for a worker's timer):
-- one index probe per kind. Caps: a full kind is left out: its ready keys are no reason to
-- poll; a freed slot notifies. Limits: a kind without room waits until it frees (a charge
-- that frees room early notifies).
create function holdfast.next_run_at(kinds text[]) returns timestamptz
  language sql stable security definer set search_path = pg_catalog, pg_temp as $$
  select min(greatest(x.at, r.at)) from holdfast._claimable(kinds) as kd (kind, room)
  cross join lateral (
    select k.head_run_at as at from holdfast.keys k
    where k.head_kind = kd.kind and k.head_id is not null and not k.busy
    order by k.head_run_at limit 1) x
  cross join lateral (select max(holdfast._limit_room_at(kl.limit_name, kl.units)) as at
    from holdfast.kind_limits kl where kl.kind = kd.kind) r
$$;
select holdfast._grant('execute', 'function holdfast.next_run_at(text[])', 'holdfast_worker');
