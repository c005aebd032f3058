-- Limits (guarantee 9): at most `units` per sliding window of `per`, shared by every kind that
-- names the limit (migrations/0008_limits.sql). A run of such a kind starts only when each of
-- its limits has room for the units it reserves: claim (40_claim) leaves out kinds without room
-- (_admissible), then admits each key it locked under the limits' row locks (_admit), so two
-- claims never both take the last units, whatever process or language runs them. A run counts
-- its reservation until it is charged (charge), then what it was charged; a run that dies keeps
-- it counted. throttle closes a limit for everyone and hands the run back. Kinds that name no
-- limit never reach these functions.

-- The earliest moment a run reserving `need` fits in the limit, if not now (null: room now):
-- the oldest runs leave the window one by one until enough has left, and a throttle's close
-- ends. Reads the oldest rows only, as many as must leave.
create function holdfast._limit_room_at(limit_name text, need bigint) returns timestamptz
  language plpgsql volatile set plan_cache_mode = force_generic_plan as $$
declare
  l holdfast.limits;
  r record;
  v_now timestamptz := clock_timestamp();
  v_at timestamptz := v_now;
  v_used bigint;
begin
  select * into l from holdfast.limits x where x.name = _limit_room_at.limit_name;
  if not found then
    return null;
  end if;
  v_used := l.used;
  if v_used + need > l.units then
    for r in
      select lr.at, coalesce(lr.charged, lr.reserved) as units from holdfast.limit_runs lr
      where lr.limit_name = l.name order by lr.at
    loop
      v_at := greatest(v_at, r.at + l.per);
      v_used := v_used - r.units;
      exit when v_used + need <= l.units;
    end loop;
  end if;
  v_at := greatest(v_at, l.closed_until);
  return case when v_at > v_now then v_at end;
end $$;

-- The kinds of a claim whose every limit has room for a run now (read without locks: _admit
-- decides). A full kind is left out, so its ready keys cost a claim of other kinds nothing.
create function holdfast._admissible(kinds text[]) returns text[]
  language plpgsql volatile as $$
begin
  return coalesce((select array_agg(k) from unnest(kinds) k
    where not exists (select 1 from holdfast.kind_limits kl
      where kl.kind = k and holdfast._limit_room_at(kl.limit_name, kl.units) is not null)), '{}');
end $$;

-- Admits the runs of the keys a claim locked (fences: their new fences, slots: as
-- _claim_slots returned them, or null). Each limit involved is row-locked, in name order, so
-- admissions of one limit happen one at a time, and runs out of its window are deleted first.
-- A key whose kind's limits all have room reserves its units on each (a limit_runs row); a key
-- without room gets slot 0 (its slot, if any, is unlocked here): the claim unlocks and skips it,
-- so the task stays pending in its place without an attempt. Returns the slots.
create function holdfast._admit(keys text[], fences bigint[], kinds text[], slots int[])
returns int[]
  language plpgsql set plan_cache_mode = force_generic_plan as $$
declare
  v_slots int[] := coalesce(slots, array_fill(null::int, array[cardinality(keys)]));
  v_names text[];
  v_now timestamptz;
  v_ok boolean;
  r record;
begin
  select array_agg(distinct kl.limit_name) into v_names
  from holdfast.kind_limits kl where kl.kind = any (kinds);
  perform 1 from holdfast.limits l where l.name = any (v_names) order by l.name for no key update;
  -- After the locks: admission times follow the order of admissions, so a window counted here
  -- holds every run admitted before.
  v_now := clock_timestamp();
  -- One range of limit_runs_at per limit: the runs that left the window since the last claim.
  for r in select l.name, l.per from holdfast.limits l where l.name = any (v_names) loop
    with gone as (
      delete from holdfast.limit_runs lr where lr.limit_name = r.name and lr.at <= v_now - r.per
      returning coalesce(lr.charged, lr.reserved) as units)
    update holdfast.limits l set used = l.used - g.units
    from (select sum(gone.units) as units from gone) g
    where l.name = r.name and g.units is not null;
  end loop;
  for i in 1..cardinality(keys) loop
    continue when v_slots[i] = 0;
    select bool_and(l.used + kl.units <= l.units and coalesce(l.closed_until <= v_now, true))
    into v_ok
    from holdfast.kind_limits kl join holdfast.limits l on l.name = kl.limit_name
    where kl.kind = kinds[i];
    continue when v_ok is null; -- a kind without limits
    if v_ok then
      update holdfast.limits l set used = l.used + kl.units
      from holdfast.kind_limits kl where kl.kind = kinds[i] and l.name = kl.limit_name;
      insert into holdfast.limit_runs (limit_name, key, fence, at, reserved)
      select kl.limit_name, keys[i], fences[i], v_now, kl.units
      from holdfast.kind_limits kl where kl.kind = kinds[i];
    else
      if v_slots[i] > 0 then
        perform pg_advisory_unlock(holdfast._slot_class(kinds[i]), v_slots[i]);
      end if;
      v_slots[i] := 0;
    end if;
  end loop;
  return v_slots;
end $$;

-- Takes back the reservations of runs that will not start: the claim's admitted keys that
-- yielded no task (not busy after the claim), or tasks released before they started.
create function holdfast._unreserve(keys text[], fences bigint[], kinds text[]) returns void
  language plpgsql as $$
begin
  with gone as (
    delete from holdfast.limit_runs lr
    using unnest(keys, fences, kinds) g (key, fence, kind), holdfast.kind_limits kl
    where kl.kind = g.kind and lr.limit_name = kl.limit_name and lr.key = g.key
      and lr.fence = g.fence
    returning lr.limit_name, coalesce(lr.charged, lr.reserved) as units)
  update holdfast.limits l set used = l.used - g.units
  from (select gone.limit_name, sum(gone.units) as units from gone group by 1) g
  where l.name = g.limit_name;
end $$;

-- claim's keys that yielded no task after _admit reserved for them.
create function holdfast._unadmit(keys text[], fences bigint[], kinds text[], slots int[])
returns void
  language plpgsql as $$
declare
  v_keys text[];
  v_fences bigint[];
  v_kinds text[];
begin
  select array_agg(g.key), array_agg(g.fence), array_agg(g.kind) into v_keys, v_fences, v_kinds
  from unnest(keys, fences, kinds, slots) g (key, fence, kind, slot)
  join holdfast.keys k on k.key = g.key
  where coalesce(g.slot, -1) <> 0 and not k.busy;
  if v_keys is not null then
    perform holdfast._unreserve(v_keys, v_fences, v_kinds);
  end if;
end $$;

-- release()'s tasks that this session claimed ahead and never started spent nothing.
create function holdfast._release_reservations(ids bigint[], fences bigint[]) returns void
  language plpgsql as $$
declare
  v_keys text[];
  v_fences bigint[];
  v_kinds text[];
begin
  select array_agg(t.key), array_agg(t.fence), array_agg(t.kind) into v_keys, v_fences, v_kinds
  from unnest(ids, fences) d (id, fence) join holdfast.tasks t on t.id = d.id
  where t.fence = d.fence and t.state = 'running' and t.started_at is null
    and t.holder_pid = pg_backend_pid()
    and exists (select 1 from holdfast.kind_limits kl where kl.kind = t.kind);
  if v_keys is not null then
    perform holdfast._unreserve(v_keys, v_fences, v_kinds);
  end if;
end $$;

-- Wakes the workers of the kinds drawing on a limit: room may have freed.
create function holdfast._notify_limit(limit_name text) returns void
  language sql as $$
  select null::void from (select pg_notify('holdfast', kl.kind) from holdfast.kind_limits kl
    where kl.limit_name = _notify_limit.limit_name) x
$$;

-- Declares a limit or changes it: at most `units` (at least 1) per sliding window of `per`
-- (longer than zero). Refused (HF002) when a kind reserves more than units per run: that kind
-- could never start. Role holdfast_worker.
create function holdfast.define_limit(name text, units bigint, per interval) returns void
  language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_variable
declare
  v_name text := $1;
  v_units bigint := $2;
  v_per interval := $3;
begin
  if v_name is null or v_name !~ '^[A-Za-z0-9_.:-]{1,100}$' then
    perform holdfast._raise('HF002', format('holdfast: invalid limit name %L', v_name),
      'a limit is 1 to 100 characters of letters, digits, _ . : -');
  end if;
  if v_units is null or v_units < 1 then
    perform holdfast._raise('HF002', format('holdfast: limit %s: units must be at least 1', v_name));
  end if;
  if v_per is null or v_per <= interval '0' then
    perform holdfast._raise('HF002',
      format('holdfast: limit %s: the window (per) must be longer than zero', v_name));
  end if;
  if exists (select 1 from holdfast.kind_limits kl where kl.limit_name = v_name
             and kl.units > v_units) then
    perform holdfast._raise('HF002', format(
      'holdfast: limit %s: a kind reserves more than %s units per run and could never start',
      v_name, v_units));
  end if;
  insert into holdfast.limits as l (name, units, per) values (v_name, v_units, v_per)
  on conflict on constraint limits_pkey do update set units = excluded.units, per = excluded.per;
  perform holdfast._notify_limit(v_name);
end $$;
select holdfast._grant('execute', 'function holdfast.define_limit(text, bigint, interval)',
  'holdfast_worker');

-- define_kind's limits: a JSON object of limit name to the units each run reserves on it
-- (a whole number from 1 to the limit's units); it replaces the kind's limits ('{}': none).
-- null keeps them. Unknown limits and bad units are refused (HF002).
create function holdfast._set_kind_limits(kind text, limits jsonb) returns void
  language plpgsql as $$
declare
  r record;
  v_units numeric;
  v_max bigint;
begin
  if limits is null then
    return;
  end if;
  if jsonb_typeof(limits) <> 'object' then
    perform holdfast._raise('HF002',
      'holdfast: limits must be a JSON object of limit name to the units a run reserves');
  end if;
  for r in select e.key, e.value from jsonb_each(limits) e loop
    v_units := case when jsonb_typeof(r.value) = 'number' then (r.value #>> '{}')::numeric end;
    if v_units is null or v_units <> trunc(v_units) or v_units < 1 then
      perform holdfast._raise('HF002', format(
        'holdfast: kind %s: the units reserved on limit %s must be a whole number of at least 1',
        kind, r.key));
    end if;
    select l.units into v_max from holdfast.limits l where l.name = r.key;
    if not found then
      perform holdfast._raise('HF002', format('holdfast: kind %s names an unknown limit %L',
        kind, r.key), 'declare it first: define_limit(name, units, per)');
    end if;
    if v_units > v_max then
      perform holdfast._raise('HF002', format(
        'holdfast: kind %s reserves %s units of limit %s, which allows %s: it could never start',
        kind, v_units, r.key, v_max));
    end if;
  end loop;
  delete from holdfast.kind_limits kl
  where kl.kind = _set_kind_limits.kind and not (limits ? kl.limit_name);
  insert into holdfast.kind_limits as kl (kind, limit_name, units)
  select _set_kind_limits.kind, e.key, (e.value #>> '{}')::bigint from jsonb_each(limits) e
  on conflict on constraint kind_limits_pkey do update set units = excluded.units;
end $$;

-- Charges `units` (0 or more) that the run holding `fence` spent on a limit: the run's charges
-- add up and replace its reservation in the limit's window (more or less than reserved; less
-- frees room at once, and the kinds' workers are told). Returns false and changes nothing when
-- the task is not running under that fence or its holder session is gone (a zombie's charge
-- is refused). A run whose admission already left the window changes nothing (true). Any
-- connection may call it, as for checkpoint. HF002: negative units, an unknown limit or one
-- the task's kind does not name; HF003: no such task. Role holdfast_worker.
create function holdfast.charge(id bigint, fence bigint, limit_name text, units bigint)
returns boolean
  language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_id bigint := $1;
  v_fence bigint := $2;
  v_limit text := $3;
  v_units bigint := $4;
  t holdfast.tasks;
  l holdfast.limits;
  v_old bigint;
  v_charged bigint;
  v_new bigint;
  v_most bigint;
begin
  if v_units is null or v_units < 0 then
    perform holdfast._raise('HF002', 'holdfast: a charge must be 0 or more units');
  end if;
  -- The task row's lock serializes this with a takeover's claim, as a checkpoint does.
  select * into t from holdfast.tasks x where x.id = v_id for share;
  if not found then
    perform holdfast._raise('HF003', format('holdfast: no task with id %s', v_id));
  end if;
  if not exists (select 1 from holdfast.kind_limits kl
                 where kl.kind = t.kind and kl.limit_name = v_limit) then
    perform holdfast._raise('HF002', format('holdfast: kind %s does not draw on limit %L',
      t.kind, v_limit), 'name it in the kind''s limits');
  end if;
  if t.state <> 'running' or t.fence is distinct from v_fence
     or not holdfast._holder_alive(t.holder_pid, t.holder_started, t.key) then
    return false;
  end if;
  select * into l from holdfast.limits x where x.name = v_limit for no key update;
  select coalesce(lr.charged, lr.reserved), lr.charged into v_old, v_charged
  from holdfast.limit_runs lr
  where lr.limit_name = v_limit and lr.key = t.key and lr.fence = v_fence
    and lr.at > clock_timestamp() - l.per;
  if not found then
    return true;
  end if;
  v_new := coalesce(v_charged, 0) + v_units;
  update holdfast.limit_runs lr set charged = v_new
  where lr.limit_name = v_limit and lr.key = t.key and lr.fence = v_fence;
  update holdfast.limits x set used = x.used - v_old + v_new where x.name = v_limit;
  -- Room freed where a kind may have found none: wake its workers.
  select max(kl.units) into v_most from holdfast.kind_limits kl where kl.limit_name = v_limit;
  if v_new < v_old and l.used + v_most > l.units then
    perform holdfast._notify_limit(v_limit);
  end if;
  return true;
end $$;
select holdfast._grant('execute', 'function holdfast.charge(bigint, bigint, text, bigint)',
  'holdfast_worker');

-- The provider refused the run's call (a 429): closes the limit for every worker until `until`
-- and hands the run (every task of the key under this fence) back: pending again in its place,
-- the attempt not counted, its key unlocked; it starts again once the limit reopens. Its
-- reservation stays counted. Called on the session holding the run (as fail). Returns false
-- and changes nothing when the run is not held under that fence by this session, or when a
-- cancel was requested meanwhile (the worker then reports it with fail(), which records the
-- cancel). HF002: an unknown limit or no time; HF003: no such task. Role holdfast_worker.
create function holdfast.throttle(id bigint, fence bigint, limit_name text, until timestamptz)
returns boolean
  language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_id bigint := $1;
  v_fence bigint := $2;
  v_limit text := $3;
  v_until timestamptz := $4;
  v_key text;
  v_ids bigint[];
begin
  if v_until is null then
    perform holdfast._raise('HF002', 'holdfast: throttle needs the time the limit reopens');
  end if;
  if not exists (select 1 from holdfast.limits l where l.name = v_limit) then
    perform holdfast._raise('HF002', format('holdfast: unknown limit %L', v_limit));
  end if;
  select t.key into v_key from holdfast.tasks t where t.id = v_id;
  if not found then
    perform holdfast._raise('HF003', format('holdfast: no task with id %s', v_id));
  end if;
  -- Under the key row's lock (as hand_over): a cancel cannot commit between the check and the
  -- hand-back, which would make the next claim forget it.
  perform 1 from holdfast.keys k where k.key = v_key for no key update;
  select array_agg(t.id) into v_ids from holdfast.tasks t
  where t.key = v_key and t.state = 'running' and t.fence = v_fence;
  if v_ids is null
     or exists (select 1 from holdfast.tasks t where t.id = any (v_ids) and t.cancel_requested)
  then
    return false;
  end if;
  if exists (select 1 from holdfast._finish_many(v_ids,
      array_fill(v_fence, array[cardinality(v_ids)]), 'released',
      jsonb_build_object('message', format('throttled: limit %s closed until %s', v_limit,
        v_until)), null)) then
    return false;
  end if;
  update holdfast.limits l set closed_until = greatest(l.closed_until, v_until)
  where l.name = v_limit;
  return true;
end $$;
select holdfast._grant('execute',
  'function holdfast.throttle(bigint, bigint, text, timestamptz)', 'holdfast_worker');

-- Each limit as inspect, the dashboard and the metrics show it: units per window, what its
-- window holds now (used = reserved by runs not charged yet + charged), the runs in it, until
-- when a throttle closed it, its kinds, the ready tasks of those kinds that cannot start for
-- want of room (waiting), and when room frees for the largest reservation (null: now).
create function holdfast.limit_usage()
returns table (name text, units bigint, per interval, used bigint, reserved bigint,
               charged bigint, runs bigint, closed_until timestamptz, kinds text[],
               waiting bigint, room_at timestamptz)
  language sql volatile security definer set search_path = pg_catalog, pg_temp as $$
  select l.name, l.units, l.per, coalesce(u.reserved, 0) + coalesce(u.charged, 0),
    coalesce(u.reserved, 0), coalesce(u.charged, 0), coalesce(u.runs, 0),
    case when l.closed_until > now() then l.closed_until end, k.kinds, coalesce(k.waiting, 0),
    holdfast._limit_room_at(l.name, coalesce(k.most, 0))
  from holdfast.limits l
  cross join lateral (
    select sum(lr.reserved) filter (where lr.charged is null)::bigint as reserved,
      sum(lr.charged)::bigint as charged, count(*) as runs
    from holdfast.limit_runs lr where lr.limit_name = l.name and lr.at > clock_timestamp() - l.per
  ) u
  cross join lateral (
    select array_agg(kl.kind order by kl.kind) as kinds, max(kl.units) as most,
      sum(case when holdfast._limit_room_at(l.name, kl.units) is not null then (
        select count(*) from holdfast.keys ky
        where ky.head_kind = kl.kind and ky.head_id is not null and not ky.busy
          and ky.head_run_at <= now()) else 0 end)::bigint as waiting
    from holdfast.kind_limits kl where kl.limit_name = l.name
  ) k
  order by l.name
$$;
select holdfast._grant('execute', 'function holdfast.limit_usage()',
  'holdfast_worker', 'holdfast_observer');
select holdfast._grant('select', 'holdfast.limits, holdfast.kind_limits, holdfast.limit_runs',
  'holdfast_observer');
