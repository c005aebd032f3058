-- Debounce: enqueue_task(..., debounce => interval, max_wait => interval). A deduplicated
-- enqueue with debounce pushes the pending task's start to debounce after this enqueue,
-- bounded by the task's first enqueue + max_wait. enqueue_task and enqueue as in 0002 with
-- the two parameters and the steps marked "Debounce".

drop function holdfast.enqueue(text, text, jsonb, timestamptz, int, text, int, text);
drop function holdfast.enqueue_task(text, text, jsonb, timestamptz, int, text, int, text);

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
  max_wait interval default null
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
  -- Debounce: the pending task of the dedupe key starts no earlier than debounce after the
  -- latest enqueue, and no later than its first enqueue + max_wait (pushes stop there).
  if enqueue_task.debounce is not null then
    if enqueue_task.dedupe_key is null then
      perform holdfast._raise('HF002', 'holdfast: debounce needs a dedupe_key',
        'the dedupe key names what is debounced');
    end if;
    if enqueue_task.debounce < interval '0' or enqueue_task.max_wait < interval '0' then
      perform holdfast._raise('HF002', 'holdfast: debounce and max_wait must not be negative');
    end if;
    v_run_at := greatest(v_run_at, now() + least(enqueue_task.debounce, enqueue_task.max_wait));
  elsif enqueue_task.max_wait is not null then
    perform holdfast._raise('HF002', 'holdfast: max_wait needs debounce');
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
        -- Debounce: push the pending task's start (never earlier, never past created_at +
        -- max_wait), re-place the key's head, and tell workers so their timers follow.
        if enqueue_task.debounce is not null then
          update holdfast.tasks t set run_at = least(now() + enqueue_task.debounce,
              coalesce(t.created_at + enqueue_task.max_wait, now() + enqueue_task.debounce))
          where t.id = v_id and t.run_at < least(now() + enqueue_task.debounce,
              coalesce(t.created_at + enqueue_task.max_wait, now() + enqueue_task.debounce));
          if found then
            perform holdfast._refresh_key(enqueue_task.key);
            perform pg_notify('holdfast', enqueue_task.kind);
          end if;
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
  on_dedupe text default 'keep',
  debounce interval default null,
  max_wait interval default null
) returns bigint
  language sql as $$
  select e.id from holdfast.enqueue_task(kind, key, payload, run_at, priority, dedupe_key,
    max_attempts, on_dedupe, debounce, max_wait) e
$$;

alter function holdfast.enqueue_task(text, text, jsonb, timestamptz, int, text, int, text, interval, interval)
  security definer set search_path = pg_catalog, pg_temp;
alter function holdfast.enqueue(text, text, jsonb, timestamptz, int, text, int, text, interval, interval)
  security definer set search_path = pg_catalog, pg_temp;
revoke all on all functions in schema holdfast from public;
do $$
begin
  if exists (select 1 from pg_roles where rolname = 'holdfast_producer') then
    grant execute on function
      holdfast.enqueue_task(text, text, jsonb, timestamptz, int, text, int, text, interval, interval),
      holdfast.enqueue(text, text, jsonb, timestamptz, int, text, int, text, interval, interval)
      to holdfast_producer;
  end if;
end $$;
