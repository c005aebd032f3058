-- Orphans: a task 'running' whose holder session is gone. One elected worker (the holder of
-- the leadership lock) sweeps them back to the queue.

-- Leadership is an advisory lock in the two-int key space, apart from the keys' bigint ids.
create function holdfast.try_lead() returns boolean
  language sql security definer set search_path = pg_catalog, pg_temp
  as $$ select pg_try_advisory_lock(1752132708, 1) $$;
select holdfast._grant('execute', 'function holdfast.try_lead()', 'holdfast_worker');

-- Until when the sweep leader may stop sweeping, and so until when followers may expect no
-- heartbeat: the earliest moment a leader duty falls due. null when a task is running (its
-- holder may die) or a key's head is due now (a claim may start it at any moment); otherwise
-- the earliest of: a key's head_run_at (a head becomes due without anyone being told), a
-- schedule's next tick (next_at, stored by the leader that fired the previous one), the next
-- prune (prune_due(), api/55_prune.sql), but no sooner than a minute from now (an idle cluster
-- is woken for pruning at most that often), and 'infinity' when there is none. So a leader
-- that dies while quiet is replaced by the time its next duty is due (src/worker/sweeper.ts).
-- A schedule no leader has read yet has next_at null: its declaration NOTIFYs
-- holdfast_schedules, which ends the quiet like a task's NOTIFY does.
-- Every other way to a running task starts with a NOTIFY on channel holdfast (enqueue, retry,
-- a cancel that uncovers a due head, a finish, the sweep itself), which ends the leader's quiet.
-- Cheap with millions of pending or finished tasks: the first live entry of tasks_running, one
-- keys_next_run_at probe per kind (as next_run_at does; a busy key has a running task, so the
-- partial index's "not busy" leaves nothing out), the schedules (one row each), and four
-- index probes per kind for the next prune.
-- Volatile: in the sweep's statement it runs after sweep() and must see what sweep() changed.
create function holdfast.quiet_until() returns timestamptz
  language sql volatile security definer set search_path = pg_catalog, pg_temp as $$
  select case when q.at > now() then q.at end
  from (select case when exists (select 1 from holdfast.tasks t where t.state = 'running')
      then null
      else least(
        coalesce((select min(x.at) from holdfast.kinds kd cross join lateral (
          select k.head_run_at as at from holdfast.keys k
          where k.head_kind = kd.kind and k.head_id is not null and not k.busy
          order by k.head_run_at limit 1) x), 'infinity'),
        coalesce((select min(s.next_at) from holdfast.schedules s), 'infinity'),
        greatest(holdfast.prune_due(), now() + interval '1 minute')) end as at
    offset 0) q -- not pulled up: the probes would run once per mention of q.at
$$;
select holdfast._grant('execute', 'function holdfast.quiet_until()', 'holdfast_worker');

-- Running tasks whose holder no longer holds their key's lock. A live backend is not proof of
-- a live holder: a session pooler keeps the server backend of a client that died, frees its
-- locks (DISCARD ALL) and may hand that backend, same pid and start, to another client. So the
-- lock decides: a bigint advisory lock is stored as (classid, objid) = (high, low) 32 bits,
-- objsubid 1, held by the holder's pid. (A new backend that reused a dead holder's pid cannot
-- hold that key: the key is busy while the task runs, so no claim takes it.) pg_locks is read
-- once per query into a hashed subplan, and not at all when nothing runs: the cost follows the
-- running tasks and the locks held, not the number of idle sessions.
create view holdfast.orphans as
select t.id, t.kind, t.key, t.attempt, t.fence, t.worker, t.holder_pid, t.started_at
from holdfast.tasks t
join holdfast.keys k on k.key = t.key
where t.state = 'running'
  and (coalesce(t.holder_pid, 0), k.lock_id) not in (
    select l.pid, (l.classid::bigint << 32) | l.objid::bigint
    from pg_locks l
    where l.locktype = 'advisory' and l.granted and l.objsubid = 1 and l.pid is not null
      and l.database = (select d.oid from pg_database d where d.datname = current_database()));
select holdfast._grant('select', 'holdfast.orphans', 'holdfast_worker', 'holdfast_observer');

-- Returns orphaned tasks to the queue as their next attempt (or dead-letters them once their
-- attempts are used up), and notifies idle workers. A requeued task keeps its place in its
-- key's order (place_at) and may start at once (run_at = now): it is its key's head again,
-- ahead of the tasks queued behind it, whatever the kind's strict_order. Each orphan is
-- confirmed under the key's advisory lock and row lock: a holder that is alive, or committing
-- its completion, holds one of them, so a live run is never taken away. An orphan recorded
-- under this very session (a pooler gave this backend to a new client) is swept too: the view
-- found its lock not held here, so the try-lock below is a real one, not a re-entry.
create function holdfast.sweep() returns int
  language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
  r record;
  t holdfast.tasks;
  v_state text;
  n int := 0;
begin
  for r in
    select o.id, o.key, o.fence, holdfast.lock_id(o.key) as lock_id
    from holdfast.orphans o
  loop
    continue when not pg_try_advisory_lock(r.lock_id);
    perform 1 from holdfast.keys k where k.key = r.key for no key update;
    select * into t from holdfast.tasks where id = r.id;
    if t.state = 'running' and t.fence = r.fence then
      if t.started_at is null and not t.cancel_requested then
        -- Claimed ahead and never started: given back in its place, not an attempt.
        update holdfast.tasks u set state = 'pending', attempt = u.attempt - 1 where u.id = t.id;
      else
        v_state := holdfast._next_state('lost', t.cancel_requested, t.attempt, t.max_attempts);
        update holdfast.tasks u set
          state = v_state,
          run_at = case when v_state = 'pending' then now() else u.run_at end,
          finished_at = case when v_state = 'pending' then null else now() end,
          last_error = jsonb_build_object('message', 'holder session ended during the run')
        where u.id = t.id;
        insert into holdfast.attempts as a (task_id, attempt, fence, worker, pid, started_at,
                                            finished_at, outcome, error)
        values (t.id, t.attempt, t.fence, t.worker, t.holder_pid, coalesce(t.started_at, now()),
                now(), 'lost', jsonb_build_object('message', 'holder session ended during the run'))
        on conflict (task_id, attempt) do update set finished_at = excluded.finished_at,
          outcome = excluded.outcome, error = excluded.error;
      end if;
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
select holdfast._grant('execute', 'function holdfast.sweep()', 'holdfast_worker');
