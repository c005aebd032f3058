-- Recurring schedules (tables: migrations/0003_schedules.sql). Declared by any process,
-- fired by the sweep leader (one per cluster, src/worker/schedule-ticker.ts). The cron
-- expression is parsed by the TypeScript leader (a maintained parser, not SQL); the database
-- records which ticks were enqueued, so each tick is enqueued once whoever leads.

-- Declares a schedule, or updates it: idempotent, so every process may declare its schedules
-- at start. A changed cron or timezone counts ticks from now (no catch-up of the old
-- definition's ticks); other changes apply from the next tick. Returns true when something
-- changed. Notifies the leader (channel holdfast_schedules).
create function holdfast.schedule(
  name text, cron text, kind text, key text, payload jsonb default '{}',
  timezone text default null, backfill int default 1, priority int default 0
) returns boolean
  language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
  old holdfast.schedules;
begin
  if name is null or name = '' or octet_length(name) > 200 then
    perform holdfast._raise('HF002', 'holdfast: schedule name must be 1 to 200 bytes');
  end if;
  if cron is null or btrim(cron) = '' or octet_length(cron) > 200 then
    perform holdfast._raise('HF002', 'holdfast: cron must be a cron expression');
  end if;
  if not exists (select 1 from holdfast.kinds k where k.kind = schedule.kind) then
    perform holdfast._raise('HF001', format('holdfast: unknown kind %L', schedule.kind),
      'define it with holdfast.define_kind() first');
  end if;
  if key is null or key = '' or octet_length(key) > 1000 then
    perform holdfast._raise('HF002', 'holdfast: key must be a non-empty string of at most 1000 bytes');
  end if;
  if payload is null then
    perform holdfast._raise('HF002', 'holdfast: payload must be a JSON value, not null');
  end if;
  if octet_length(payload::text) > 1048576 then
    perform holdfast._raise('HF002', 'holdfast: payload is larger than 1 MiB');
  end if;
  if timezone = '' or (timezone is not null
      and not exists (select 1 from pg_timezone_names z where z.name = schedule.timezone)) then
    perform holdfast._raise('HF002', format('holdfast: unknown time zone %L', schedule.timezone));
  end if;
  if backfill is null or backfill not between 1 and 1000 then
    perform holdfast._raise('HF002', 'holdfast: backfill must be between 1 and 1000');
  end if;
  if priority is null then
    perform holdfast._raise('HF002', 'holdfast: priority must not be null');
  end if;

  select * into old from holdfast.schedules s where s.name = schedule.name for update;
  if not found then
    insert into holdfast.schedules as s (name, cron, timezone, kind, key, payload, priority, backfill)
    values (schedule.name, btrim(schedule.cron), schedule.timezone, schedule.kind, schedule.key,
            schedule.payload, schedule.priority, schedule.backfill)
    on conflict do nothing;
    if not found then
      -- Declared concurrently by another process: compare with what it stored.
      return holdfast.schedule(name, cron, kind, key, payload, timezone, backfill, priority);
    end if;
  elsif (old.cron, old.timezone, old.kind, old.key, old.payload, old.priority, old.backfill)
        is not distinct from (btrim(schedule.cron), schedule.timezone, schedule.kind,
                              schedule.key, schedule.payload, schedule.priority, schedule.backfill) then
    return false;
  elsif (old.cron, old.timezone) is not distinct from (btrim(schedule.cron), schedule.timezone) then
    update holdfast.schedules s set kind = schedule.kind, key = schedule.key,
      payload = schedule.payload, priority = schedule.priority, backfill = schedule.backfill,
      updated_at = now()
    where s.name = schedule.name;
  else
    update holdfast.schedules s set cron = btrim(schedule.cron), timezone = schedule.timezone,
      kind = schedule.kind, key = schedule.key, payload = schedule.payload,
      priority = schedule.priority, backfill = schedule.backfill, revision = s.revision + 1,
      covered_until = greatest(s.covered_until, now()), next_at = null, updated_at = now()
    where s.name = schedule.name;
  end if;
  perform pg_notify('holdfast_schedules', schedule.name);
  return true;
end $$;
select holdfast._grant('execute',
  'function holdfast.schedule(text, text, text, text, jsonb, text, int, int)', 'holdfast_producer');

-- Removes a schedule (and its tick history); false when there was none.
create function holdfast.unschedule(name text) returns boolean
  language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
begin
  delete from holdfast.schedules s where s.name = unschedule.name;
  if not found then
    return false;
  end if;
  perform pg_notify('holdfast_schedules', unschedule.name);
  return true;
end $$;
select holdfast._grant('execute', 'function holdfast.unschedule(text)', 'holdfast_producer');

-- Every schedule. next_at is the next tick as the leader computed it (null until a leader
-- has read the current definition); last_late_ms is how late the latest tick was enqueued
-- (its enqueue's time minus the tick's), null before the first tick.
create function holdfast.schedules() returns table (
  name text, cron text, timezone text, kind text, key text, payload jsonb, priority int,
  backfill int, revision int, covered_until timestamptz, next_at timestamptz,
  last_tick_at timestamptz, last_task_id bigint, last_late_ms float8, created_at timestamptz,
  updated_at timestamptz
)
  language sql stable security definer set search_path = pg_catalog, pg_temp as $$
  select s.name, s.cron, s.timezone, s.kind, s.key, s.payload, s.priority, s.backfill,
    s.revision, s.covered_until, s.next_at, s.last_tick_at, s.last_task_id,
    (select extract(epoch from st.enqueued_at - st.tick_at) * 1000
     from holdfast.schedule_ticks st where st.name = s.name and st.tick_at = s.last_tick_at),
    s.created_at, s.updated_at
  from holdfast.schedules s order by s.name
$$;
select holdfast._grant('execute', 'function holdfast.schedules()',
  'holdfast_producer', 'holdfast_worker', 'holdfast_observer');
select holdfast._grant('select', 'holdfast.schedules, holdfast.schedule_ticks', 'holdfast_observer');

-- Called by the leader: enqueues the given ticks of a schedule that are after covered_until
-- (each tick once: covered_until moves forward under the row lock, and the tick's row is
-- unique), then moves covered_until to new_covered and stores next_at. A tick's task has the
-- tick as its run_at. Returns the number of ticks enqueued, or -1 when the schedule is gone
-- or its definition changed since the leader read revision (the leader reads it again).
create function holdfast.fire_schedule(
  name text, revision int, ticks timestamptz[], new_covered timestamptz, next_at timestamptz
) returns int
  language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
  s holdfast.schedules;
  v_tick timestamptz;
  v_id bigint;
  n int := 0;
begin
  select * into s from holdfast.schedules x where x.name = fire_schedule.name for update;
  if not found or s.revision <> fire_schedule.revision then
    return -1;
  end if;
  for v_tick in select distinct t from unnest(ticks) t where t > s.covered_until order by 1 loop
    insert into holdfast.schedule_ticks (name, tick_at, task_id)
    values (s.name, v_tick, 0)
    on conflict do nothing;
    continue when not found;
    v_id := holdfast.enqueue(s.kind, s.key, s.payload, v_tick, s.priority);
    update holdfast.schedule_ticks t set task_id = v_id
    where t.name = s.name and t.tick_at = v_tick;
    s.last_tick_at := v_tick;
    s.last_task_id := v_id;
    n := n + 1;
  end loop;
  update holdfast.schedules x set
    covered_until = greatest(x.covered_until, new_covered),
    next_at = fire_schedule.next_at,
    last_tick_at = s.last_tick_at,
    last_task_id = s.last_task_id
  where x.name = s.name;
  if n > 0 then
    delete from holdfast.schedule_ticks t where t.name = s.name and t.tick_at <= (
      select k.tick_at from holdfast.schedule_ticks k where k.name = s.name
      order by k.tick_at desc offset 100 limit 1);
  end if;
  return n;
end $$;
select holdfast._grant('execute',
  'function holdfast.fire_schedule(text, int, timestamptz[], timestamptz, timestamptz)', 'holdfast_worker');
