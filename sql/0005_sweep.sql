-- Orphans: a task 'running' whose holder session is gone. One elected worker sweeps.

-- Leadership is an advisory lock in the two-int key space, apart from the keys' bigint ids.
create function holdfast.try_lead() returns boolean
  language sql as $$ select pg_try_advisory_lock(1752132708, 1) $$;

-- Running tasks whose holder session no longer exists (cheap pre-filter: pid + backend
-- start). Where backend_start is hidden from this role, an existing pid counts as alive.
create view holdfast.orphans as
select t.id, t.kind, t.key, t.attempt, t.fence, t.worker, t.holder_pid, t.started_at
from holdfast.tasks t
where t.state = 'running'
  and not exists (
    select 1 from pg_stat_activity a
    where a.pid = t.holder_pid and (a.backend_start is null or a.backend_start = t.holder_started));

-- Returns orphaned tasks to the queue as their next attempt (or dead-letters them once their
-- attempts are used up), and notifies idle workers. Each orphan is confirmed under the key's
-- advisory lock and row lock: a holder that is alive, or committing its completion, holds one
-- of them, so a live run is never taken away.
create function holdfast.sweep() returns int
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
      v_state := case
        when t.cancel_requested then 'cancelled'
        when t.attempt >= t.max_attempts then 'failed'
        else 'pending' end;
      update holdfast.tasks u set
        state = v_state,
        run_at = case when v_state = 'pending' then now() else u.run_at end,
        finished_at = case when v_state = 'pending' then null else now() end,
        last_error = jsonb_build_object('message', 'holder session ended during the run')
      where u.id = t.id;
      update holdfast.attempts a set finished_at = now(), outcome = 'lost',
        error = jsonb_build_object('message', 'holder session ended during the run')
      where a.task_id = t.id and a.attempt = t.attempt;
      perform holdfast._refresh_key(t.key);
      perform holdfast._notify_if_ready(t.key);
      n := n + 1;
    end if;
    perform pg_advisory_unlock(r.lock_id);
  end loop;
  return n;
end $$;

-- Holder of each held key lock, and sessions waiting for one (granted = false).
create view holdfast.locks as
select
  k.key,
  k.lock_id,
  l.granted,
  l.pid,
  a.application_name,
  a.client_addr,
  a.backend_start,
  t.id as task_id,
  t.kind,
  t.attempt,
  t.fence,
  t.worker,
  t.started_at,
  now() - t.started_at as held_for
from pg_locks l
join holdfast.keys k
  on l.locktype = 'advisory' and l.objsubid = 1
  and k.lock_id = ((l.classid::bigint << 32) | l.objid::bigint)
left join pg_stat_activity a on a.pid = l.pid
left join lateral (
  select * from holdfast.tasks t
  where t.key = k.key and t.state = 'running' and t.holder_pid = l.pid
  order by t.id limit 1) t on l.granted
where l.database = (select oid from pg_database where datname = current_database());
