-- Kinds and enqueue. Errors use SQLSTATE class HF (see README "SQL contract").

create function holdfast._raise(code text, msg text, hint text default null) returns void
  language plpgsql as $$
begin
  if hint is null then
    raise exception using errcode = code, message = msg;
  end if;
  raise exception using errcode = code, message = msg, hint = hint;
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

-- Recomputes a key's head (next pending task) and busy flag. The caller holds the key row's
-- lock, so this statement's snapshot sees every committed change to the key's tasks.
-- plpgsql, not sql: PostgreSQL < 18 re-plans a non-inlined SQL function on every call, which
-- cost 0.25 ms per call here (claim and complete each call it once per key).
create function holdfast._refresh_key(k text) returns void
  language plpgsql as $$
begin
  update holdfast.keys set
    busy = exists (select 1 from holdfast.tasks t where t.key = k and t.state = 'running'),
    (head_id, head_kind, head_priority, head_run_at) = (
      select t.id, t.kind, t.priority, t.run_at from holdfast.tasks t
      where t.key = k and t.state = 'pending'
      order by t.priority, t.run_at, t.id
      limit 1)
  where key = k;
end $$;

-- Adds a task; with dedupe_key, returns the pending task of that dedupe key instead
-- (its payload is kept as it was). Notifies idle workers on commit.
create function holdfast.enqueue_task(
  kind text,
  key text,
  payload jsonb default '{}',
  run_at timestamptz default null,
  priority int default 0,
  dedupe_key text default null,
  max_attempts int default null
) returns table (id bigint, deduped boolean)
  language plpgsql as $$
#variable_conflict use_column
declare
  v_kind holdfast.kinds;
  v_run_at timestamptz := coalesce(enqueue_task.run_at, now());
  v_id bigint;
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

  insert into holdfast.keys (key, lock_id)
  values (enqueue_task.key, holdfast.lock_id(enqueue_task.key))
  on conflict do nothing;
  -- Lock the key row first (lock order everywhere: key row, then task rows).
  perform 1 from holdfast.keys k where k.key = enqueue_task.key for no key update;

  if enqueue_task.dedupe_key is not null then
    select t.id into v_id from holdfast.tasks t
    where t.dedupe_key = enqueue_task.dedupe_key and t.state = 'pending';
    if found then
      return query select v_id, true;
      return;
    end if;
  end if;

  insert into holdfast.tasks (kind, key, payload, run_at, priority, dedupe_key, max_attempts)
  values (enqueue_task.kind, enqueue_task.key, enqueue_task.payload, v_run_at, enqueue_task.priority,
          enqueue_task.dedupe_key, coalesce(enqueue_task.max_attempts, v_kind.max_attempts))
  on conflict (dedupe_key) where state = 'pending' and dedupe_key is not null do nothing
  returning tasks.id into v_id;

  if v_id is null then
    -- A concurrent producer inserted the same dedupe key in another key; it is committed now.
    select t.id into v_id from holdfast.tasks t
    where t.dedupe_key = enqueue_task.dedupe_key and t.state = 'pending';
    return query select v_id, true;
    return;
  end if;

  update holdfast.keys k
  set head_id = v_id, head_kind = enqueue_task.kind, head_priority = enqueue_task.priority,
      head_run_at = v_run_at
  where k.key = enqueue_task.key
    and (k.head_id is null
         or (enqueue_task.priority, v_run_at, v_id) < (k.head_priority, k.head_run_at, k.head_id));

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
  max_attempts int default null
) returns bigint
  language sql as $$
  select e.id from holdfast.enqueue_task(kind, key, payload, run_at, priority, dedupe_key, max_attempts) e
$$;
