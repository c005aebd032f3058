-- Completion, failure, cancellation and fences. complete()/fail() run on the session that
-- claimed the task, are checked against the fence, and release the key's lock.

-- Exponential backoff with jitter: about 2^(attempt-1) seconds +-25 %, capped at one hour.
-- With a seed (the claim's fence) the jitter is the same for every task of one claim, so a
-- failed batch comes back in its order; different claims still spread out.
create function holdfast._backoff(attempt int, seed bigint default null) returns interval
  language sql volatile as $$
  select interval '1 second' * least(power(2, greatest(attempt - 1, 0)), 3600)
    * (0.75 + 0.5 * case when seed is null then random()
                         else (hashint8(seed)::bigint & 1048575) / 1048576.0 end)
$$;

-- Tells idle workers when the key has a task ready now.
-- (Helpers called per key are plpgsql so their plans are cached: see _refresh_key.)
create function holdfast._notify_if_ready(k text) returns void
  language plpgsql as $$
begin
  perform pg_notify('holdfast', head_kind) from holdfast.keys
  where key = k and head_id is not null and not busy and head_run_at <= now();
end $$;

-- Unlocks the key unless another task of it still runs under this session (a batch).
create function holdfast._release(k text) returns void
  language plpgsql as $$
begin
  perform pg_advisory_unlock(holdfast.lock_id(k))
  where not exists (
    select 1 from holdfast.tasks t
    where t.key = k and t.state = 'running' and t.holder_pid = pg_backend_pid());
end $$;

-- Ends an attempt. outcome: 'succeeded' | 'failed'. Returns false, changing nothing, when the
-- task is not running under this fence in this session (a newer claim exists, or the caller
-- lost its session): a late report of a run that lost its lock is never recorded.
create function holdfast._finish(
  task_id bigint, fence bigint, outcome text, error jsonb, retry_in interval
) returns boolean
  language plpgsql as $$
#variable_conflict use_column
declare
  t holdfast.tasks;
  v_state text;
begin
  t := holdfast._locked_task(_finish.task_id);
  if t.state <> 'running' or t.fence is distinct from _finish.fence
     or t.holder_pid <> pg_backend_pid() or t.holder_started <> holdfast._session_started() then
    return false;
  end if;

  v_state := case
    when outcome = 'succeeded' then 'succeeded'
    when t.cancel_requested then 'cancelled'
    when t.attempt >= t.max_attempts then 'failed'
    else 'pending' end;

  update holdfast.tasks u set
    state = v_state,
    run_at = case when v_state = 'pending'
                  then now() + coalesce(_finish.retry_in, holdfast._backoff(t.attempt, t.fence))
                  else u.run_at end,
    finished_at = case when v_state = 'pending' then null else now() end,
    last_error = coalesce(_finish.error, u.last_error)
  where u.id = t.id;

  update holdfast.attempts a set finished_at = now(),
    outcome = case when v_state = 'cancelled' then 'cancelled' else _finish.outcome end,
    error = _finish.error
  where a.task_id = t.id and a.attempt = t.attempt;

  -- A success starts the kind's minimum interval on this key (read by the key's head).
  if v_state = 'succeeded' then
    insert into holdfast.key_kinds as kk (key, kind, last_succeeded_at)
    select t.key, t.kind, now() from holdfast.kinds kd
    where kd.kind = t.kind and kd.min_interval > interval '0'
    on conflict (key, kind) do update set last_succeeded_at = excluded.last_succeeded_at;
  end if;

  -- requeue: the key's next task waits behind keys that were ready before this run ended.
  perform holdfast._refresh_key(t.key, true);
  perform holdfast._release(t.key);
  perform holdfast._notify_if_ready(t.key);
  return true;
end $$;

create function holdfast.complete(id bigint, fence bigint) returns boolean
  language sql as $$ select holdfast._finish(id, fence, 'succeeded', null, null) $$;

-- Completes several tasks in one commit; returns the ids whose completion was rejected.
create function holdfast.complete_many(ids bigint[], fences bigint[]) returns setof bigint
  language sql as $$
  select d.id from unnest(ids, fences) as d(id, fence)
  where not holdfast._finish(d.id, d.fence, 'succeeded', null, null)
$$;

-- Records a failed attempt: retried after retry_in (default: backoff), dead-lettered
-- (state 'failed') once max_attempts attempts are used, 'cancelled' if a cancel was requested.
create function holdfast.fail(
  id bigint, fence bigint, error text, retry_in interval default null, stack text default null
) returns boolean
  language sql as $$
  select holdfast._finish(id, fence, 'failed',
    jsonb_strip_nulls(jsonb_build_object('message', error, 'stack', stack)), retry_in)
$$;

-- Cancels a task: a pending one never starts; a running one is flagged and its worker is told
-- (NOTIFY holdfast_cancel), and it ends 'cancelled' unless it succeeds first.
-- Returns false when the task had already ended.
create function holdfast.cancel(id bigint) returns boolean
  language plpgsql as $$
#variable_conflict use_column
declare
  t holdfast.tasks;
begin
  t := holdfast._locked_task(cancel.id);
  if t.state = 'pending' then
    update holdfast.tasks set state = 'cancelled', finished_at = now() where id = t.id;
    perform holdfast._refresh_key(t.key);
    return true;
  elsif t.state = 'running' then
    update holdfast.tasks set cancel_requested = true where id = t.id;
    perform pg_notify('holdfast_cancel', t.id::text);
    return true;
  end if;
  return false;
end $$;

-- Guards a handler's own writes: call inside the handler's transaction. Raises HF004 once a
-- newer claim of the key exists. The KEY SHARE row lock conflicts with claim's FOR UPDATE,
-- so the transaction either commits before a takeover's fence exists or is rejected.
create function holdfast.assert_fence(key text, fence bigint) returns void
  language plpgsql as $$
#variable_conflict use_column
declare
  v_fence bigint;
begin
  select k.fence into v_fence from holdfast.keys k where k.key = assert_fence.key for key share;
  if v_fence is null or assert_fence.fence is null or v_fence <> assert_fence.fence then
    perform holdfast._raise('HF004', format('holdfast: stale fence %s for key %L (current %s)',
      assert_fence.fence, assert_fence.key, coalesce(v_fence::text, 'none')),
      'a newer claim of this key exists: this run lost its lock and must stop');
  end if;
end $$;

-- Dead letters: tasks that used all their attempts, with their attempts history.
create view holdfast.dead_letters as
select t.id, t.kind, t.key, t.payload, t.attempt, t.max_attempts, t.last_error, t.created_at,
  t.finished_at,
  (select jsonb_agg(jsonb_build_object('attempt', a.attempt, 'worker', a.worker,
     'started_at', a.started_at, 'finished_at', a.finished_at, 'outcome', a.outcome,
     'error', a.error) order by a.attempt)
   from holdfast.attempts a where a.task_id = t.id) as attempts
from holdfast.tasks t
where t.state = 'failed';
