-- Enqueue, retry and cancel: the producer's side (role holdfast_producer).

-- What is wrong with a task to enqueue, or null. The one statement of a task's limits (key
-- length, payload size) and rules: enqueue_task and enqueue_many both check it, and the
-- TypeScript client checks none of them (it maps the HF002 this raises), so no two copies
-- can drift apart. A single immutable SELECT: the planner inlines it into enqueue_many's
-- set-based check.
create function holdfast._task_error(key text, payload jsonb, priority int, max_attempts int,
  dedupe_key text, on_dedupe text, debounce interval, max_wait interval) returns text
  language sql immutable as $$
  select case
    when key is null or key = '' or octet_length(key) > 1000 then
      'key must be a non-empty string of at most 1000 bytes'
    when payload is null then 'payload must be a JSON value, not null'
    when octet_length(payload::text) > 1048576 then 'payload is larger than 1 MiB'
    when max_attempts < 1 then 'max_attempts must be at least 1'
    when priority is null then 'priority must not be null'
    when on_dedupe is null or on_dedupe not in ('keep', 'replace', 'merge') then
      'on_dedupe must be keep, replace or merge'
    when dedupe_key = '' then 'dedupe_key must not be empty'
    when debounce is not null and dedupe_key is null then
      'debounce needs a dedupe_key (the dedupe key names what is debounced)'
    when max_wait is not null and debounce is null then 'max_wait needs debounce'
    when debounce < interval '0' or max_wait < interval '0' then
      'debounce and max_wait must not be negative'
  end
$$;

-- Adds a task. With dedupe_key, at most one task per dedupe key is pending: when one is, its
-- id is returned with deduped = true and its payload is kept (on_dedupe 'keep', default),
-- replaced ('replace') or merged with this one as jsonb || ('merge'). A dedupe key belongs to
-- one key (HF002 otherwise). traceparent, tracestate: the producer's W3C trace context, kept
-- in holdfast.task_traces for the worker's spans (docs/tracing.md). Notifies idle workers on
-- commit.
create function holdfast.enqueue_task(
  kind text,
  key text,
  payload jsonb default '{}',
  run_at timestamptz default null,
  priority int default 0,
  dedupe_key text default null,
  max_attempts int default null,
  on_dedupe text default 'keep',
  debounce interval default null,
  max_wait interval default null,
  traceparent text default null,
  tracestate text default null
) returns table (id bigint, deduped boolean)
  language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
  v_kind holdfast.kinds;
  v_run_at timestamptz := coalesce(enqueue_task.run_at, now());
  v_id bigint;
  v_key text;
  v_head holdfast.tasks;
  v_error text;
begin
  select * into v_kind from holdfast.kinds k where k.kind = enqueue_task.kind;
  if not found then
    perform holdfast._raise('HF001', format('holdfast: unknown kind %L', enqueue_task.kind),
      'define it with holdfast.define_kind() or start a worker that handles it');
  end if;
  v_error := holdfast._task_error(enqueue_task.key, enqueue_task.payload, enqueue_task.priority,
    enqueue_task.max_attempts, enqueue_task.dedupe_key, enqueue_task.on_dedupe,
    enqueue_task.debounce, enqueue_task.max_wait);
  v_error := coalesce(v_error,
    holdfast._trace_error(enqueue_task.traceparent, enqueue_task.tracestate));
  if v_error is not null then
    perform holdfast._raise('HF002', 'holdfast: ' || v_error);
  end if;
  -- Debounce: the pending task of the dedupe key starts no earlier than debounce after the
  -- latest enqueue, and no later than its first enqueue + max_wait (pushes stop there).
  if enqueue_task.debounce is not null then
    v_run_at := greatest(v_run_at, now() + least(enqueue_task.debounce, enqueue_task.max_wait));
  end if;

  -- Lock the key row first (lock order everywhere: key row, then task rows). Holding it, no
  -- claim can start this key's pending task before we commit, so a deduped request is never
  -- folded into a task that already started, and no prune deletes the row (api/55_prune.sql).
  -- A row pruned between the insert and the lock is created again.
  loop
    insert into holdfast.keys (key, lock_id)
    values (enqueue_task.key, holdfast.lock_id(enqueue_task.key))
    on conflict do nothing;
    perform 1 from holdfast.keys k where k.key = enqueue_task.key for no key update;
    exit when found;
  end loop;

  if enqueue_task.dedupe_key is not null then
    for attempt in 1..2 loop
      select t.id, t.key into v_id, v_key from holdfast.tasks t
      where t.dedupe_key = enqueue_task.dedupe_key and t.state = 'pending';
      if found then
        if v_key <> enqueue_task.key then
          perform holdfast._raise('HF002', format('holdfast: dedupe key %L is pending on key %L, not %L',
            enqueue_task.dedupe_key, v_key, enqueue_task.key), 'a dedupe key belongs to one key');
        end if;
        if enqueue_task.on_dedupe <> 'keep' then
          update holdfast.tasks t set payload = case enqueue_task.on_dedupe
              when 'replace' then enqueue_task.payload else t.payload || enqueue_task.payload end
          where t.id = v_id;
        end if;
        -- Debounce: push the pending task's start (never earlier, never past created_at +
        -- max_wait) and its place in the key's order with it, as a delayed enqueue would be;
        -- re-place the key's head, and tell workers so their timers follow.
        if enqueue_task.debounce is not null then
          update holdfast.tasks t set
            run_at = p.at, place_at = greatest(t.place_at, p.at)
          from (select least(now() + enqueue_task.debounce,
                  coalesce(c.created_at + enqueue_task.max_wait, now() + enqueue_task.debounce)) as at
                from holdfast.tasks c where c.id = v_id) p
          where t.id = v_id and t.run_at < p.at;
          if found then
            perform holdfast._refresh_key(enqueue_task.key);
            perform pg_notify('holdfast', enqueue_task.kind);
          end if;
        end if;
        return query select v_id, true;
        return;
      end if;
      exit when attempt = 2;
      insert into holdfast.tasks (kind, key, payload, run_at, place_at, priority, dedupe_key,
                                  max_attempts)
      values (enqueue_task.kind, enqueue_task.key, enqueue_task.payload, v_run_at, v_run_at,
              enqueue_task.priority, enqueue_task.dedupe_key,
              coalesce(enqueue_task.max_attempts, v_kind.max_attempts))
      on conflict (dedupe_key) where state = 'pending' and dedupe_key is not null do nothing
      returning tasks.id into v_id;
      exit when v_id is not null;
      -- A concurrent producer committed the same dedupe key on another key: report it above.
    end loop;
  else
    insert into holdfast.tasks (kind, key, payload, run_at, place_at, priority, dedupe_key,
                                max_attempts)
    values (enqueue_task.kind, enqueue_task.key, enqueue_task.payload, v_run_at, v_run_at,
            enqueue_task.priority, null, coalesce(enqueue_task.max_attempts, v_kind.max_attempts))
    returning tasks.id into v_id;
  end if;
  -- Traced: the producer's context, for every attempt's span to link to (a deduped enqueue
  -- returned above: the task keeps the context of the enqueue that created it).
  if enqueue_task.traceparent is not null and v_id is not null then
    insert into holdfast.task_traces (task_id, traceparent, tracestate)
    values (v_id, enqueue_task.traceparent, enqueue_task.tracestate);
  end if;

  -- The new task becomes the head if it comes before the current head in (priority, place_at,
  -- id) order: one primary-key lookup, no scan of the key's pending tasks.
  select t.* into v_head from holdfast.keys k join holdfast.tasks t on t.id = k.head_id
  where k.key = enqueue_task.key;
  if v_head.id is null
     or (enqueue_task.priority, v_run_at, v_id) < (v_head.priority, v_head.place_at, v_head.id) then
    update holdfast.keys k
    set head_id = v_id, head_kind = enqueue_task.kind, head_priority = enqueue_task.priority,
        emptied_at = null,
        head_run_at = greatest(v_run_at, holdfast._interval_bound(enqueue_task.key, enqueue_task.kind))
    where k.key = enqueue_task.key;
  end if;

  perform pg_notify('holdfast', enqueue_task.kind);
  return query select v_id, false;
end $$;
select holdfast._grant('execute',
  'function holdfast.enqueue_task(text, text, jsonb, timestamptz, int, text, int, text, interval, interval, text, text)',
  'holdfast_producer');

create function holdfast.enqueue(
  kind text,
  key text,
  payload jsonb default '{}',
  run_at timestamptz default null,
  priority int default 0,
  dedupe_key text default null,
  max_attempts int default null,
  on_dedupe text default 'keep',
  debounce interval default null,
  max_wait interval default null,
  traceparent text default null,
  tracestate text default null
) returns bigint
  language sql security definer set search_path = pg_catalog, pg_temp as $$
  select e.id from holdfast.enqueue_task(kind, key, payload, run_at, priority, dedupe_key,
    max_attempts, on_dedupe, debounce, max_wait, traceparent, tracestate) e
$$;
select holdfast._grant('execute',
  'function holdfast.enqueue(text, text, jsonb, timestamptz, int, text, int, text, interval, interval, text, text)',
  'holdfast_producer');

-- Requeues a dead-lettered ('failed') or cancelled task as a new attempt, with
-- extra_attempts more attempts (default: the kind's max_attempts). Its attempts history is
-- kept. It re-enters its key's order at the back, as if enqueued now (the key's tasks moved on
-- while it was dead). Returns false, changing nothing, when the task is pending, running or
-- succeeded, or when another task of its dedupe key is pending.
create function holdfast.retry(id bigint, extra_attempts int default null) returns boolean
  language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
  t holdfast.tasks;
begin
  if extra_attempts is not null and extra_attempts < 1 then
    perform holdfast._raise('HF002', 'holdfast: extra_attempts must be at least 1');
  end if;
  t := holdfast._locked_task(retry.id);
  if t.state not in ('failed', 'cancelled') then
    return false;
  end if;
  if t.dedupe_key is not null and exists (
    select 1 from holdfast.tasks p where p.dedupe_key = t.dedupe_key and p.state = 'pending') then
    return false;
  end if;
  update holdfast.tasks u set
    state = 'pending', run_at = now(), place_at = now(), finished_at = null,
    cancel_requested = false,
    max_attempts = t.attempt + coalesce(retry.extra_attempts,
      (select kd.max_attempts from holdfast.kinds kd where kd.kind = t.kind))
  where u.id = t.id;
  if not found then
    -- Pruned meanwhile (a prune batch had locked it before we read it).
    perform holdfast._raise('HF003', format('holdfast: no task with id %s', t.id));
  end if;
  perform holdfast._refresh_key(t.key);
  perform pg_notify('holdfast', t.kind);
  return true;
end $$;
select holdfast._grant('execute', 'function holdfast.retry(bigint, int)', 'holdfast_producer');

-- Cancels a task: a pending one never starts; a running one is flagged and its worker is told
-- (NOTIFY holdfast_cancel), and it ends 'cancelled' unless it succeeds first.
-- Returns false when the task had already ended.
create function holdfast.cancel(id bigint) returns boolean
  language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
  t holdfast.tasks;
begin
  t := holdfast._locked_task(cancel.id);
  if t.state = 'pending' then
    update holdfast.tasks set state = 'cancelled', finished_at = now() where id = t.id;
    perform holdfast._refresh_key(t.key);
    -- The next task may be due now (it waited behind a delayed or backed-off head): tell idle
    -- workers, and the quiet sweep leader, which sleeps until the earliest head's start.
    perform holdfast._notify_if_ready(t.key);
    return true;
  elsif t.state = 'running' then
    update holdfast.tasks set cancel_requested = true where id = t.id;
    perform pg_notify('holdfast_cancel', t.id::text);
    return true;
  end if;
  return false;
end $$;
select holdfast._grant('execute', 'function holdfast.cancel(bigint)', 'holdfast_producer');
