-- Base: roles, the access helper, errors, lock identity, fences, backoff and the attempt-end
-- rule shared by finish and sweep.
--
-- Roles. holdfast_producer enqueues, cancels and requeues; holdfast_worker runs tasks;
-- holdfast_observer reads. Grant them to your login roles. The entry points are SECURITY
-- DEFINER (owner's rights, fixed search_path), so no role needs rights on the tables, and only
-- the grants written beside each function can call it (90_access.sql revokes PUBLIC).
-- Roles are cluster-wide: creating them needs CREATEROLE, and tolerates a concurrent migration
-- of another database creating them first. Without CREATEROLE, have an admin create the three
-- roles (NOLOGIN) before migrating; grants to a missing role are skipped.
do $$
declare
  r text;
begin
  foreach r in array array['holdfast_producer', 'holdfast_worker', 'holdfast_observer'] loop
    if not exists (select 1 from pg_roles where rolname = r) then
      begin
        execute format('create role %I nologin', r);
      exception
        when duplicate_object or unique_violation then null;
        when insufficient_privilege then
          raise notice 'holdfast: cannot create role % (needs CREATEROLE); create it, then migrate', r;
      end;
    end if;
  end loop;
end $$;

-- grant <privileges> on <object> to each of roles that exists, e.g.
-- select holdfast._grant('execute', 'function holdfast.claim(text[], text, int, int)', 'holdfast_worker');
create function holdfast._grant(privileges text, object text, variadic roles text[]) returns void
  language plpgsql as $$
declare
  r text;
begin
  foreach r in array roles loop
    if exists (select 1 from pg_roles where rolname = r) then
      execute format('grant %s on %s to %I', privileges, object, r);
    end if;
  end loop;
end $$;

select holdfast._grant('usage', 'schema holdfast',
  'holdfast_producer', 'holdfast_worker', 'holdfast_observer');
select holdfast._grant('select',
  'holdfast.tasks, holdfast.attempts, holdfast.keys, holdfast.kinds', 'holdfast_observer');
-- The schema version (its last migration) for inspect, the dashboard and workers.
select holdfast._grant('select', 'holdfast.migrations',
  'holdfast_producer', 'holdfast_worker', 'holdfast_observer');

-- Errors use SQLSTATE class HF (docs/sql-api.md): HF001 unknown kind, HF002 bad input,
-- HF003 no such task, HF004 stale fence.
create function holdfast._raise(code text, msg text, hint text default null) returns void
  language plpgsql as $$
begin
  if hint is null then
    raise exception using errcode = code, message = msg;
  end if;
  raise exception using errcode = code, message = msg, hint = hint;
end $$;

-- Lock identity is computed here and only here, so every language agrees.
-- The seed keeps holdfast's ids away from naive hashtext() users of the same bigint lock space.
create function holdfast.lock_id(key text) returns bigint
  language sql immutable strict parallel safe
  as $$ select hashtextextended(key, 4714072861207531113) $$;
select holdfast._grant('execute', 'function holdfast.lock_id(text)',
  'holdfast_producer', 'holdfast_worker');

-- Fences are monotonic across crashes and failovers: a claim whose commit is lost still
-- handed out a fence below any fence issued later, because fences track the wall clock
-- (1024 per millisecond) and never go below the key's last committed fence + 1. A key row
-- that is new (fence 0) may be one that pruning deleted and an enqueue created again: its
-- first fence is also above every deleted key row's (fence_floor), whatever the clock says.
-- (The floor is read only then: a key row is deleted, and its floor raised, in one commit
-- that precedes the commit creating the row again, so a claim that sees the row sees it.)
-- claim writes this rule out in its statement (one clock reading and floor read per claim,
-- not a call per key): a change here is a change there.
create function holdfast._next_fence(current bigint) returns bigint
  language sql volatile
  as $$ select greatest(current + 1, (extract(epoch from clock_timestamp()) * 1000)::bigint * 1024,
    case when current = 0 then (select f.fence + 1 from holdfast.fence_floor f) end) $$;

-- The caller's session identity, recorded as the holder of what it claims.
-- Cached in a session setting: reading it from pg_stat_get_activity costs ~30 us per call. A
-- forged value only makes this session's runs look orphaned to the sweep, which then cannot
-- take their key lock, so nothing is taken from a live session.
create function holdfast._session_started() returns timestamptz
  language plpgsql stable as $$
declare
  v text := current_setting('holdfast.session_started', true);
begin
  if v is null or v = '' then
    -- Microseconds since the epoch: exact, and independent of DateStyle and TimeZone.
    v := (select (extract(epoch from backend_start) * 1000000)::bigint
          from pg_stat_get_activity(pg_backend_pid()))::text;
    perform set_config('holdfast.session_started', v, false);
  end if;
  return timestamptz 'epoch' + v::bigint * interval '1 microsecond';
end $$;

-- Exponential backoff with jitter: about 2^(attempt-1) seconds +-25 %, capped at one hour.
-- With a seed (the claim's fence) the jitter is the same for every task of one claim, so a
-- failed batch comes back in its order; different claims still spread out.
create function holdfast._backoff(attempt int, seed bigint default null) returns interval
  language sql volatile as $$
  select interval '1 second' * least(power(2, greatest(attempt - 1, 0)), 3600)
    * (0.75 + 0.5 * case when seed is null then random()
                         else (hashint8(seed)::bigint & 1048575) / 1048576.0 end)
$$;

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
