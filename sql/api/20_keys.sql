-- Keys: each key row carries its head (the next pending task: id, kind, priority, and when it
-- may start) and whether a task of it is running. claim reads ready heads through the
-- keys_ready_kind index, so its cost does not grow with the number of pending tasks. Every
-- path that changes a key's pending or running tasks holds the key row's lock (lock order
-- everywhere: key row, then task rows) and keeps these columns right.

-- Reads a task under its key row's lock, raising HF003 when there is no such task. The second
-- read sees every change committed before the lock.
create function holdfast._locked_task(task_id bigint) returns holdfast.tasks
  language plpgsql as $$
declare
  t holdfast.tasks;
begin
  select * into t from holdfast.tasks where id = task_id;
  if not found then
    perform holdfast._raise('HF003', format('holdfast: no task with id %s', task_id));
  end if;
  perform 1 from holdfast.keys k where k.key = t.key for no key update;
  select * into t from holdfast.tasks where id = task_id;
  if not found then -- pruned meanwhile
    perform holdfast._raise('HF003', format('holdfast: no task with id %s', task_id));
  end if;
  return t;
end $$;

-- The earliest time a task of this kind may start on this key: the last success of the kind
-- on the key plus the kind's minimum interval (null when there is no such bound).
-- (plpgsql so its plan is cached: PostgreSQL < 18 re-plans a non-inlined SQL function on
-- every call.)
create function holdfast._interval_bound(k text, kd text) returns timestamptz
  language plpgsql stable as $$
begin
  return (select kk.last_succeeded_at + kinds.min_interval
    from holdfast.key_kinds kk join holdfast.kinds on kinds.kind = kk.kind
    where kk.key = k and kk.kind = kd and kinds.min_interval > interval '0');
end $$;

-- Recomputes the head (next pending task) and busy flag of each key. The caller holds the key
-- rows' locks, so this statement's snapshot sees every committed change to their tasks.
-- The head is the first pending task in the key's order (priority, place_at, id): a task's
-- place, not its earliest start, so a head that must wait (a retry's backoff, a minimum
-- interval, a delayed start) delays the key's later tasks instead of letting them pass.
-- head_run_at is when the head may start: its run_at, pushed by the kind's minimum interval,
-- and with requeue (a run of the key just ended) pushed to now, so the key goes behind keys
-- that were already waiting: a busy key cannot starve the others.
-- While a key is busy its head is not read (claim skips busy keys) and may be stale; every
-- path that can clear busy recomputes it here.
-- force_generic_plan: plpgsql otherwise re-plans parameterized statements on every call.
create function holdfast._refresh_keys(ks text[], requeue boolean default false) returns void
  language plpgsql set plan_cache_mode = force_generic_plan as $$
begin
  update holdfast.keys k set
    busy = exists (select 1 from holdfast.tasks t where t.key = k.key and t.state = 'running'),
    -- Left without any task (a success deleted at completion): for the pruner to take.
    emptied_at = case when exists (select 1 from holdfast.tasks t where t.key = k.key) then null
                      else coalesce(k.emptied_at, now()) end,
    (head_id, head_kind, head_priority, head_run_at) = (
      select t.id, t.kind, t.priority,
        greatest(t.run_at, kk.last_succeeded_at + kd.min_interval, case when requeue then now() end)
      from holdfast.tasks t
      join holdfast.kinds kd on kd.kind = t.kind
      left join holdfast.key_kinds kk on kk.key = t.key and kk.kind = t.kind
        and kd.min_interval > interval '0'
      where t.key = k.key and t.state = 'pending'
      order by t.priority, t.place_at, t.id
      limit 1)
  where k.key = any (ks);
end $$;

-- The one-key form used by cancel, retry and sweep.
create function holdfast._refresh_key(k text, requeue boolean default false) returns void
  language plpgsql as $$
begin
  perform holdfast._refresh_keys(array[k], requeue);
end $$;

-- Tells idle workers of each free key's next task, ready now or later (for a later one they
-- set their timers, as for a delayed enqueue): called when keys are free again.
create function holdfast._notify_heads(ks text[]) returns void
  language plpgsql as $$
begin
  perform pg_notify('holdfast', k.head_kind) from holdfast.keys k
  where k.key = any (ks) and k.head_id is not null and not k.busy;
end $$;

-- Tells idle workers when the key has a task ready now.
create function holdfast._notify_if_ready(k text) returns void
  language plpgsql as $$
begin
  perform pg_notify('holdfast', head_kind) from holdfast.keys
  where key = k and head_id is not null and not busy and head_run_at <= now();
end $$;
