-- Completion, failure, release, settle and fences: a worker's reports, on the session that
-- claimed the tasks, each checked against the task's fence. Role holdfast_worker.

-- Ends attempts. outcome: 'succeeded' | 'failed' | 'released' (claimed but never started: back
-- to pending in its place, the attempt not counted). Returns, per id not ended here, its status:
-- 'rejected' when the task is not running under this fence in the holder session (a newer
-- claim exists, or the holder lost its session), changing nothing for it, so a late report of
-- a run that lost its lock is never recorded; 'own' (holder mode only) when it must be ended on
-- the holder session itself (a capped kind's slot is a lock of that session).
-- holder null: the caller's session holds the tasks, and their key locks are released here.
-- holder = pid of another session of the caller's login role (a worker's lock session, while
-- its LISTEN session reports): each task's key lock must be held by that session now (read
-- from pg_locks, whether or not its backend start is visible), and the locks stay held: the
-- holder releases them afterwards (settle's unlock_keys), so the key is never free before the
-- report is committed. A success already recorded under the same fence and holder is accepted
-- again (a report whose commit the caller could not confirm is sent again).
create function holdfast._finish_many(
  ids bigint[], fences bigint[], outcome text, error jsonb, retry_in interval,
  holder int default null
) returns table (id bigint, status text)
  language plpgsql set plan_cache_mode = force_generic_plan as $$
#variable_conflict use_column
declare
  v_keys text[];
  v_slots jsonb;
  v_rejected bigint[];
  v_own bigint[];
  v_missing bigint;
  v_pid int := coalesce(holder, pg_backend_pid());
  v_started timestamptz;
  v_held bigint[];
begin
  if holder is null then
    v_started := holdfast._session_started();
  else
    -- The holder must be a live session of the caller's login role (same backend start as at
    -- the claim, where visible) that holds the task's key lock now (pg_locks): a live backend
    -- alone is no proof, since a session pooler keeps the backend of a client that died and
    -- frees its locks. The holder keeps the lock until its report is committed.
    select timestamptz 'epoch' + (extract(epoch from a.backend_start) * 1000000)::bigint
             * interval '1 microsecond'
    into v_started from pg_stat_get_activity(holder) a
    where a.usesysid = (select r.oid from pg_roles r where r.rolname = session_user);
    if not found then
      v_held := '{}'; -- no such session, or another role's: nothing is ended
    else
      -- A bigint advisory lock is (classid, objid) = (high, low) 32 bits, objsubid 1.
      select coalesce(array_agg((l.classid::bigint << 32) | l.objid::bigint), '{}') into v_held
      from pg_locks l
      where l.locktype = 'advisory' and l.pid = holder and l.granted and l.objsubid = 1
        and l.database = (select d.oid from pg_database d where d.datname = current_database());
    end if;
  end if;
  -- (A holder's worker reports only tasks it claimed: an unknown id there is just rejected.)
  select i into v_missing from unnest(ids) i
  where holder is null and not exists (select 1 from holdfast.tasks t where t.id = i) limit 1;
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
      n.next, kd.strict_order, kd.min_interval, kd.keep_checkpoint,
      -- A success of a kind that keeps none is deleted now, as pruning would at once.
      n.next = 'succeeded' and kd.retain_succeeded = interval '0' as gone,
      -- A failed attempt to be retried waits out its backoff until retry_at. Tasks of one batch
      -- share a fence and may be reported one by one: each takes the retry time of those
      -- already reported, so the batch is due, and claimed again, whole.
      -- (They lead the key's order: only the first batch_max pending tasks are read.)
      case when n.next = 'pending' and _finish_many.outcome <> 'released' then coalesce(
        (select min(o.run_at) from (
           select o.run_at, o.fence from holdfast.tasks o
           where kd.batch_max > 1 and o.key = t.key and o.state = 'pending'
           order by o.priority, o.place_at, o.id limit kd.batch_max) o
         where o.fence = t.fence),
        now() + coalesce(retry_in, holdfast._backoff(t.attempt, t.fence))) end as retry_at
    -- (offset 0 keeps it a lookup per id: flattened, the planner may scan every running task
    -- of the kind instead, which grows with the fleet.)
    from d cross join lateral (select * from holdfast.tasks t where t.id = d.id offset 0) t
    join holdfast.kinds kd on kd.kind = t.kind
    cross join lateral (select case when _finish_many.outcome = 'released' then 'pending'
      else holdfast._next_state(_finish_many.outcome, t.cancel_requested, t.attempt, t.max_attempts)
      end as next) n
    where t.fence = d.fence and t.state = 'running' and t.holder_pid = v_pid
      and (v_started is null or t.holder_started = v_started)
      and (v_held is null or holdfast.lock_id(t.key) = any (v_held))
      and (holder is null or t.slot is null)
  ),
  upd as (
    update holdfast.tasks u set
      state = t.next,
      attempt = case when _finish_many.outcome = 'released' then u.attempt - 1 else u.attempt end,
      run_at = coalesce(t.retry_at, u.run_at),
      -- A retry keeps its place in the key's order (later tasks wait for it), unless its kind
      -- is not strict_order: then it goes back in line at its retry time and they pass it.
      place_at = case when t.strict_order then u.place_at else coalesce(t.retry_at, u.place_at) end,
      finished_at = case when t.next = 'pending' then null else now() end,
      last_error = coalesce(_finish_many.error, u.last_error),
      -- A success clears the checkpoint unless the kind keeps it (api/55_checkpoint.sql);
      -- a retry, a dead letter or a cancel keeps it: a later attempt resumes from it.
      checkpoint = case when t.next = 'succeeded' and not t.keep_checkpoint then null
                        else u.checkpoint end
    from t where u.id = t.id and not t.gone
  ),
  gone as (
    delete from holdfast.tasks g using t where g.id = t.id and t.gone
  ),
  att as (
    insert into holdfast.attempts as a (task_id, attempt, fence, worker, pid, started_at,
                                        finished_at, outcome, error)
    -- A run claimed ahead and reported before its start was marked did start.
    select t.id, t.attempt, t.fence, t.worker, t.holder_pid, coalesce(t.started_at, now()), now(),
      case when t.next = 'cancelled' then 'cancelled' else _finish_many.outcome end,
      _finish_many.error
    from t where _finish_many.outcome <> 'released' and not t.gone
    -- An attempt that was running when this migration ran has its row already.
    on conflict (task_id, attempt) do update set finished_at = excluded.finished_at,
      outcome = excluded.outcome, error = excluded.error
  ),
  -- A success starts the kind's minimum interval on this key (read by the key's head).
  kk as (
    insert into holdfast.key_kinds as kk (key, kind, last_succeeded_at)
    select distinct t.key, t.kind, now() from t
    where t.next = 'succeeded' and t.min_interval > interval '0'
    on conflict (key, kind) do update set last_succeeded_at = excluded.last_succeeded_at
  )
  select (select array_agg(distinct t.key) from t),
         (select jsonb_agg(distinct jsonb_build_array(t.key, t.kind, t.slot)) from t
          where t.slot is not null),
         z.rejected, z.own
  into v_keys, v_slots, v_rejected, v_own
  from (
    select array_agg(s.id) filter (where s.status = 'rejected') as rejected,
           array_agg(s.id) filter (where s.status = 'own') as own
    from (
      -- Only the ids not ended above are read again (one hash join, then a lookup each).
      select d.id, case
        when x.state = 'succeeded' and x.fence = d.fence and x.holder_pid = v_pid
          and _finish_many.outcome = 'succeeded' then 'ended'
        when holder is not null and x.state = 'running' and x.fence = d.fence
          and x.slot is not null then 'own'
        else 'rejected' end as status
      from d left join t on t.id = d.id
      left join lateral (select * from holdfast.tasks x where x.id = d.id and t.id is null
                         offset 0) x on true
      where t.id is null) s) z;

  if v_keys is not null then
    -- requeue: each key's next task waits behind keys that were ready before this run ended
    -- (a released task keeps its place).
    perform holdfast._refresh_keys(v_keys, _finish_many.outcome <> 'released');
  end if;
  if v_keys is not null and holder is null then
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
    perform holdfast._notify_heads(v_keys);
  end if;
  return query select r, 'rejected' from unnest(v_rejected) r
    union all select o, 'own' from unnest(v_own) o;
end $$;

create function holdfast._finish(
  task_id bigint, fence bigint, outcome text, error jsonb, retry_in interval
) returns boolean
  language sql as $$
  select not exists (select 1 from holdfast._finish_many(array[task_id], array[fence], outcome,
    error, retry_in))
$$;

create function holdfast.complete(id bigint, fence bigint) returns boolean
  language sql security definer set search_path = pg_catalog, pg_temp as $$
  select holdfast._finish(id, fence, 'succeeded', null, null)
$$;
select holdfast._grant('execute', 'function holdfast.complete(bigint, bigint)', 'holdfast_worker');

-- Completes several tasks in one commit; returns the ids whose completion was rejected.
create function holdfast.complete_many(ids bigint[], fences bigint[])
returns setof bigint
  language sql security definer set search_path = pg_catalog, pg_temp as $$
  select f.id from holdfast._finish_many(ids, fences, 'succeeded', null, null) f
$$;
select holdfast._grant('execute', 'function holdfast.complete_many(bigint[], bigint[])', 'holdfast_worker');

-- Completes tasks held by another session of the caller's login role: a worker's LISTEN
-- session reports for its lock session (holder: that session's pid), so the lock session
-- only claims and unlocks. Rows: each id not completed here, with 'rejected' (as complete_many)
-- or 'own' (a capped kind's task: complete it on the holder session). The key locks stay
-- held; the holder releases them with settle(unlock_keys) once this has committed.
create function holdfast.complete_held(ids bigint[], fences bigint[], holder int)
returns table (id bigint, status text)
  language sql security definer set search_path = pg_catalog, pg_temp as $$
  select f.id, f.status from holdfast._finish_many(ids, fences, 'succeeded', null, null, holder) f
$$;
select holdfast._grant('execute', 'function holdfast.complete_held(bigint[], bigint[], int)',
  'holdfast_worker');

-- Records a failed attempt: retried after retry_in (default: backoff), dead-lettered
-- (state 'failed') once max_attempts attempts are used, 'cancelled' if a cancel was requested.
create function holdfast.fail(
  id bigint, fence bigint, error text, retry_in interval default null, stack text default null
) returns boolean
  language sql security definer set search_path = pg_catalog, pg_temp as $$
  select holdfast._finish(id, fence, 'failed',
    jsonb_strip_nulls(jsonb_build_object('message', error, 'stack', stack)), retry_in)
$$;
select holdfast._grant('execute', 'function holdfast.fail(bigint, bigint, text, interval, text)', 'holdfast_worker');

-- Gives back tasks this session claimed but did not start (a worker's prefetched tasks when it
-- stops): pending again in their place, their attempt not counted, their keys unlocked.
-- Returns the ids that were not running under this fence in this session.
create function holdfast.release(ids bigint[], fences bigint[]) returns setof bigint
  language sql security definer set search_path = pg_catalog, pg_temp as $$
  -- Limits (api/37_limits.sql): a run that never started spent nothing of its reservations.
  select holdfast._release_reservations(ids, fences);
  select f.id from holdfast._finish_many(ids, fences, 'released', null, null) f
$$;
select holdfast._grant('execute', 'function holdfast.release(bigint[], bigint[])', 'holdfast_worker');

-- Marks runs claimed ahead (claim's start_keys) as started, once their worker starts them:
-- from then on, losing them with the session counts an attempt. Only this session's claims.
create function holdfast._mark_started(ids bigint[], fences bigint[]) returns void
  language plpgsql set plan_cache_mode = force_generic_plan as $$
begin
  update holdfast.tasks t set started_at = now()
  from unnest(ids, fences) as d (id, fence)
  where t.id = d.id and t.fence = d.fence and t.state = 'running' and t.started_at is null
    and t.holder_pid = pg_backend_pid() and t.holder_started = holdfast._session_started();
end $$;

-- Releases unlock_keys (the key locks of runs complete_held ended; their next tasks' workers
-- are told), marks started_ids as started (_mark_started), completes done_ids (same checks as
-- complete_many) and then claims (same as claim). Rows: (rejected id, null) for each rejected
-- completion, then (null, task) for each claimed task. claim() turns synchronous_commit off for
-- the transaction (cheap wake path); completions must be durable, so it is turned back on when
-- this call completed anything.
create function holdfast.settle(
  done_ids bigint[], done_fences bigint[], kinds text[], worker text, max_tasks int,
  max_keys int default null, start_keys int default null, started_ids bigint[] default null,
  started_fences bigint[] default null, unlock_keys text[] default null
) returns table (rejected bigint, task holdfast.tasks)
  language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
  v_done boolean := coalesce(cardinality(done_ids), 0) > 0;
begin
  if coalesce(cardinality(unlock_keys), 0) > 0 then
    -- Before the claim below, which may then take these keys again.
    perform pg_advisory_unlock(holdfast.lock_id(u)) from unnest(unlock_keys) u;
    perform holdfast._notify_heads(unlock_keys);
  end if;
  if coalesce(cardinality(started_ids), 0) > 0 then
    perform holdfast._mark_started(started_ids, started_fences);
  end if;
  if v_done then
    return query select r, null::holdfast.tasks from holdfast.complete_many(done_ids, done_fences) r;
  end if;
  if coalesce(max_tasks, 0) > 0 then
    return query select null::bigint, c
      from holdfast.claim(kinds, settle.worker, max_tasks, max_keys, start_keys) c;
  end if;
  if v_done then
    perform set_config('synchronous_commit', 'on', true);
  end if;
end $$;
select holdfast._grant('execute',
  'function holdfast.settle(bigint[], bigint[], text[], text, int, int, int, bigint[], bigint[], text[])',
  'holdfast_worker');

-- Guards a handler's own writes: call inside the handler's transaction, just before commit.
-- Raises HF004 once a newer claim of the key exists. The KEY SHARE row lock conflicts with
-- claim's FOR UPDATE, so the transaction either commits before a takeover's fence exists or is
-- rejected. That lock must not outlive a client that vanished (the application's pool has no
-- TCP bounds; a partitioned client leaves its backend idle in transaction until keepalives
-- give up, hours by default): the transaction's idle_in_transaction_session_timeout is
-- lowered to idle_timeout (a worker passes its lock session's release bound), so the server
-- ends it, rolled back, that long after its client went silent. A lower setting is kept.
create function holdfast.assert_fence(
  key text, fence bigint, idle_timeout interval default interval '20 seconds'
) returns void
  language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
  v_fence bigint;
  v_ms bigint := ceil(extract(epoch from idle_timeout) * 1000);
  -- Shown with a unit ('0', '250ms', '20s', '1min'), which interval input reads.
  v_now bigint := extract(epoch from
    current_setting('idle_in_transaction_session_timeout')::interval) * 1000;
begin
  if v_ms > 0 and (v_now = 0 or v_ms < v_now) then
    perform set_config('idle_in_transaction_session_timeout', v_ms::text, true);
  end if;
  select k.fence into v_fence from holdfast.keys k where k.key = assert_fence.key for key share;
  if v_fence is null or assert_fence.fence is null or v_fence <> assert_fence.fence then
    perform holdfast._raise('HF004', format('holdfast: stale fence %s for key %L (current %s)',
      assert_fence.fence, assert_fence.key, coalesce(v_fence::text, 'none')),
      'a newer claim of this key exists: this run lost its lock and must stop');
  end if;
end $$;
select holdfast._grant('execute', 'function holdfast.assert_fence(text, bigint, interval)', 'holdfast_worker');
