-- Kinds, enqueue and requeue. Errors use SQLSTATE class HF (see README "SQL contract").

create function holdfast._raise(code text, msg text, hint text default null) returns void
  language plpgsql as $$
begin
  if hint is null then
    raise exception using errcode = code, message = msg;
  end if;
  raise exception using errcode = code, message = msg, hint = hint;
end $$;

-- When a kind with a minimum interval last succeeded on a key. Read when the key's head is
-- computed, so claim enforces the interval by the head's run_at alone (no extra scan).
create table holdfast.key_kinds (
  key text not null references holdfast.keys (key),
  kind text not null references holdfast.kinds (kind),
  last_succeeded_at timestamptz not null,
  primary key (key, kind)
);

-- Reads a task under its key row's lock (lock order: key row first, then task rows), raising
-- HF003 when there is no such task. The second read sees every change committed before the lock.
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
  return t;
end $$;

-- Registers a kind or updates the settings that are given (null keeps the current value).
create function holdfast.define_kind(
  kind text,
  max_attempts int default null,
  min_interval interval default null,
  batch_max int default null
) returns void
  language plpgsql as $$
#variable_conflict use_column
begin
  if kind is null or kind !~ '^[A-Za-z0-9_.:-]{1,100}$' then
    perform holdfast._raise('HF002', format('holdfast: invalid kind name %L', define_kind.kind),
      'a kind is 1 to 100 characters of letters, digits, _ . : -');
  end if;
  if define_kind.max_attempts is not null and define_kind.max_attempts < 1 then
    perform holdfast._raise('HF002', 'holdfast: max_attempts must be at least 1');
  end if;
  if define_kind.min_interval is not null and define_kind.min_interval < interval '0' then
    perform holdfast._raise('HF002', 'holdfast: min_interval must not be negative');
  end if;
  if define_kind.batch_max is not null and define_kind.batch_max not between 1 and 1000 then
    perform holdfast._raise('HF002', 'holdfast: batch_max must be between 1 and 1000');
  end if;
  insert into holdfast.kinds as k (kind, max_attempts, min_interval, batch_max)
  values (define_kind.kind, coalesce(define_kind.max_attempts, 5),
          coalesce(define_kind.min_interval, interval '0'), coalesce(define_kind.batch_max, 1))
  on conflict (kind) do update set
    max_attempts = coalesce(define_kind.max_attempts, k.max_attempts),
    min_interval = coalesce(define_kind.min_interval, k.min_interval),
    batch_max = coalesce(define_kind.batch_max, k.batch_max);
end $$;

-- The earliest time a task of this kind may start on this key: the last success of the kind
-- on the key plus the kind's minimum interval (null when there is no such bound).
-- (plpgsql so its plan is cached: see _refresh_key.)
create function holdfast._interval_bound(k text, kd text) returns timestamptz
  language plpgsql stable as $$
begin
  return (select kk.last_succeeded_at + kinds.min_interval
    from holdfast.key_kinds kk join holdfast.kinds on kinds.kind = kk.kind
    where kk.key = k and kk.kind = kd and kinds.min_interval > interval '0');
end $$;

-- plpgsql, not sql: PostgreSQL < 18 re-plans a non-inlined SQL function on every call, which
-- cost about 0.25 ms per call (claim and complete each call it once per key).
-- Recomputes a key's head (next pending task) and busy flag. The caller holds the key row's
-- lock, so this statement's snapshot sees every committed change to the key's tasks.
-- head_run_at is when the head may start: its run_at, pushed by the kind's minimum interval,
-- and with requeue (a run of the key just ended) pushed to now, so the key goes behind keys
-- that were already waiting: a busy key cannot starve the others. new_fence: a claim's fence.
create function holdfast._refresh_key(k text, requeue boolean default false,
                                      new_fence bigint default null) returns void
  language plpgsql as $$
begin
  update holdfast.keys set
    fence = coalesce(new_fence, fence),
    busy = exists (select 1 from holdfast.tasks t where t.key = k and t.state = 'running'),
    (head_id, head_kind, head_priority, head_run_at) = (
      select t.id, t.kind, t.priority,
        greatest(t.run_at, holdfast._interval_bound(k, t.kind), case when requeue then now() end)
      from holdfast.tasks t
      where t.key = k and t.state = 'pending'
      order by t.priority, t.run_at, t.id
      limit 1)
  where key = k;
end $$;

-- Adds a task. With dedupe_key, at most one task per dedupe key is pending: when one is, its
-- id is returned with deduped = true and its payload is kept (on_dedupe 'keep', default),
-- replaced ('replace') or merged with this one as jsonb || ('merge'). A dedupe key belongs to
-- one key (HF002 otherwise). Notifies idle workers on commit.
create function holdfast.enqueue_task(
  kind text,
  key text,
  payload jsonb default '{}',
  run_at timestamptz default null,
  priority int default 0,
  dedupe_key text default null,
  max_attempts int default null,
  on_dedupe text default 'keep'
) returns table (id bigint, deduped boolean)
  language plpgsql as $$
#variable_conflict use_column
declare
  v_kind holdfast.kinds;
  v_run_at timestamptz := coalesce(enqueue_task.run_at, now());
  v_id bigint;
  v_key text;
  v_head holdfast.tasks;
begin
  select * into v_kind from holdfast.kinds k where k.kind = enqueue_task.kind;
  if not found then
    perform holdfast._raise('HF001', format('holdfast: unknown kind %L', enqueue_task.kind),
      'define it with holdfast.define_kind() or start a worker that handles it');
  end if;
  if enqueue_task.key is null or enqueue_task.key = '' or octet_length(enqueue_task.key) > 1000 then
    perform holdfast._raise('HF002', 'holdfast: key must be a non-empty string of at most 1000 bytes');
  end if;
  if enqueue_task.payload is null then
    perform holdfast._raise('HF002', 'holdfast: payload must be a JSON value, not null');
  end if;
  if octet_length(enqueue_task.payload::text) > 1048576 then
    perform holdfast._raise('HF002', 'holdfast: payload is larger than 1 MiB');
  end if;
  if enqueue_task.max_attempts is not null and enqueue_task.max_attempts < 1 then
    perform holdfast._raise('HF002', 'holdfast: max_attempts must be at least 1');
  end if;
  if enqueue_task.priority is null then
    perform holdfast._raise('HF002', 'holdfast: priority must not be null');
  end if;
  if enqueue_task.on_dedupe is null or enqueue_task.on_dedupe not in ('keep', 'replace', 'merge') then
    perform holdfast._raise('HF002', 'holdfast: on_dedupe must be keep, replace or merge');
  end if;

  insert into holdfast.keys (key, lock_id)
  values (enqueue_task.key, holdfast.lock_id(enqueue_task.key))
  on conflict do nothing;
  -- Lock the key row first (lock order everywhere: key row, then task rows). Holding it, no
  -- claim can start this key's pending task before we commit, so a deduped request is never
  -- folded into a task that already started.
  perform 1 from holdfast.keys k where k.key = enqueue_task.key for no key update;

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
        return query select v_id, true;
        return;
      end if;
      exit when attempt = 2;
      insert into holdfast.tasks (kind, key, payload, run_at, priority, dedupe_key, max_attempts)
      values (enqueue_task.kind, enqueue_task.key, enqueue_task.payload, v_run_at,
              enqueue_task.priority, enqueue_task.dedupe_key,
              coalesce(enqueue_task.max_attempts, v_kind.max_attempts))
      on conflict (dedupe_key) where state = 'pending' and dedupe_key is not null do nothing
      returning tasks.id into v_id;
      exit when v_id is not null;
      -- A concurrent producer committed the same dedupe key on another key: report it above.
    end loop;
  else
    insert into holdfast.tasks (kind, key, payload, run_at, priority, dedupe_key, max_attempts)
    values (enqueue_task.kind, enqueue_task.key, enqueue_task.payload, v_run_at,
            enqueue_task.priority, null, coalesce(enqueue_task.max_attempts, v_kind.max_attempts))
    returning tasks.id into v_id;
  end if;

  -- The new task becomes the head if it comes before the current head in (priority, run_at,
  -- id) order: one primary-key lookup, no scan of the key's pending tasks.
  select t.* into v_head from holdfast.keys k join holdfast.tasks t on t.id = k.head_id
  where k.key = enqueue_task.key;
  if v_head.id is null
     or (enqueue_task.priority, v_run_at, v_id) < (v_head.priority, v_head.run_at, v_head.id) then
    update holdfast.keys k
    set head_id = v_id, head_kind = enqueue_task.kind, head_priority = enqueue_task.priority,
        head_run_at = greatest(v_run_at, holdfast._interval_bound(enqueue_task.key, enqueue_task.kind))
    where k.key = enqueue_task.key;
  end if;

  perform pg_notify('holdfast', enqueue_task.kind);
  return query select v_id, false;
end $$;

create function holdfast.enqueue(
  kind text,
  key text,
  payload jsonb default '{}',
  run_at timestamptz default null,
  priority int default 0,
  dedupe_key text default null,
  max_attempts int default null,
  on_dedupe text default 'keep'
) returns bigint
  language sql as $$
  select e.id from holdfast.enqueue_task(kind, key, payload, run_at, priority, dedupe_key,
    max_attempts, on_dedupe) e
$$;

-- Requeues a dead-lettered ('failed') or cancelled task as a new attempt, with
-- extra_attempts more attempts (default: the kind's max_attempts). Its attempts history is
-- kept. Returns false, changing nothing, when the task is pending, running or succeeded, or
-- when another task of its dedupe key is pending.
create function holdfast.retry(id bigint, extra_attempts int default null) returns boolean
  language plpgsql as $$
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
    state = 'pending', run_at = now(), finished_at = null, cancel_requested = false,
    max_attempts = t.attempt + coalesce(retry.extra_attempts,
      (select kd.max_attempts from holdfast.kinds kd where kd.kind = t.kind))
  where u.id = t.id;
  perform holdfast._refresh_key(t.key);
  perform pg_notify('holdfast', t.kind);
  return true;
end $$;
