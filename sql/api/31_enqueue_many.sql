-- Bulk enqueue: many tasks of one kind in one statement (role holdfast_producer). Each item
-- follows enqueue_task's rules (holdfast._task_error, api/30_enqueue.sql).

-- Adds many tasks of one kind in one call. tasks: a JSON array of objects whose fields are
-- enqueue_task's parameters (key; optional payload, run_at, priority, dedupe_key,
-- max_attempts, on_dedupe, debounce, max_wait, traceparent, tracestate; timestamps and
-- intervals as text; a new task keeps its item's trace context). Returns one
-- row per item, in input order, as enqueue_task called for each item in turn would: a key's
-- tasks keep the input order, an item whose dedupe key came earlier in the batch (or is
-- pending already) folds into that task (deduped = true, on_dedupe and debounce applied in
-- input order). Set-based: a fixed number of statements whatever the number of items (the
-- fold walks only the deduped items that replace, merge or debounce, in memory). One bad item
-- refuses the whole call, HF002 naming it tasks[i] (0-based, also in the detail as
-- {"index": i}); nothing is written. Notifies idle workers on commit.
create function holdfast.enqueue_many(kind text, tasks jsonb)
returns table (id bigint, deduped boolean)
  language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
declare
  v_kind holdfast.kinds;
  v_seq regclass := pg_get_serial_sequence('holdfast.tasks', 'id')::regclass;
  v_index int;
  v_parse_failed boolean := false;
  v_deduping boolean;
  v_bad text;
  v_hint text;
  -- The items, in input order.
  v_key text[];
  v_payload jsonb[];
  v_at timestamptz[];
  v_priority int[];
  v_dkey text[];
  v_max int[];
  v_op text[];
  v_deb interval[];
  v_mw interval[];
  v_tp text[];
  v_ts text[];
  v_traced boolean;
  v_keys text[];
  v_created text[];
  v_locked int;
  -- One per dedupe key of the batch: its first item, its pending task (if any), the folded
  -- payload and start, and the start before the fold.
  g_dkey text[];
  g_first int[];
  g_id bigint[];
  g_payload jsonb[];
  g_at timestamptz[];
  g_at0 timestamptz[];
  g_created timestamptz[];
  r record;
  v_new_ord int[];
  v_new_id bigint[];
  v_ins_id bigint[];
  v_pushed text[];
begin
  select * into v_kind from holdfast.kinds k where k.kind = enqueue_many.kind;
  if not found then
    perform holdfast._raise('HF001', format('holdfast: unknown kind %L', enqueue_many.kind),
      'define it with holdfast.define_kind() or start a worker that handles it');
  end if;
  if tasks is null or jsonb_typeof(tasks) <> 'array' then
    perform holdfast._raise('HF002', 'holdfast: tasks must be a JSON array of objects');
  end if;
  if jsonb_array_length(tasks) = 0 then
    return;
  end if;

  -- One pass parses the items into arrays, in input order, and notes the first item of a
  -- wrong shape (a field of the wrong JSON type, an unknown field: a misspelt dedupe_key must
  -- not silently not dedupe). Only when there is one, or a cast failed (a malformed
  -- timestamp, interval or integer), does a second pass name the item and say what is wrong.
  begin
    select array_agg(e.t ->> 'key' order by e.ord),
      array_agg(case when e.t ? 'payload' then e.t -> 'payload' else '{}' end order by e.ord),
      array_agg((e.t ->> 'run_at')::timestamptz order by e.ord),
      array_agg(coalesce((e.t ->> 'priority')::int, 0) order by e.ord),
      array_agg(e.t ->> 'dedupe_key' order by e.ord),
      array_agg((e.t ->> 'max_attempts')::int order by e.ord),
      array_agg(coalesce(e.t ->> 'on_dedupe', 'keep') order by e.ord),
      array_agg((e.t ->> 'debounce')::interval order by e.ord),
      array_agg((e.t ->> 'max_wait')::interval order by e.ord),
      array_agg(e.t ->> 'traceparent' order by e.ord),
      array_agg(e.t ->> 'tracestate' order by e.ord),
      min(e.ord) filter (where case when jsonb_typeof(e.t) <> 'object' then true else
        jsonb_typeof(e.t -> 'key') is distinct from 'string'
        or jsonb_typeof(e.t -> 'run_at') not in ('string', 'null')
        or jsonb_typeof(e.t -> 'priority') not in ('number', 'null')
        or jsonb_typeof(e.t -> 'max_attempts') not in ('number', 'null')
        or jsonb_typeof(e.t -> 'dedupe_key') not in ('string', 'null')
        or jsonb_typeof(e.t -> 'on_dedupe') not in ('string', 'null')
        or jsonb_typeof(e.t -> 'debounce') not in ('string', 'null')
        or jsonb_typeof(e.t -> 'max_wait') not in ('string', 'null')
        or jsonb_typeof(e.t -> 'traceparent') not in ('string', 'null')
        or jsonb_typeof(e.t -> 'tracestate') not in ('string', 'null')
        or e.t - array['key', 'payload', 'run_at', 'priority', 'dedupe_key', 'max_attempts',
                       'on_dedupe', 'debounce', 'max_wait', 'traceparent', 'tracestate']
           <> '{}' end),
      count(e.t ->> 'dedupe_key') > 0
    into v_key, v_payload, v_at, v_priority, v_dkey, v_max, v_op, v_deb, v_mw, v_tp, v_ts, v_index,
      v_deduping
    from jsonb_array_elements(tasks) with ordinality e (t, ord);
  exception when invalid_text_representation or invalid_datetime_format
      or datetime_field_overflow or interval_field_overflow or numeric_value_out_of_range
      or invalid_parameter_value then
    v_parse_failed := true;
  end;

  if v_index is not null or v_parse_failed then
    select e.ord - 1, c.msg into v_index, v_bad
    from jsonb_array_elements(tasks) with ordinality e (t, ord)
    cross join lateral (select case
      when jsonb_typeof(e.t) <> 'object' then 'must be an object with a key'
      when jsonb_typeof(e.t -> 'key') is distinct from 'string' then 'key must be a string'
      when jsonb_typeof(e.t -> 'run_at') not in ('string', 'null') then 'run_at must be a timestamp string'
      when jsonb_typeof(e.t -> 'priority') not in ('number', 'null') then 'priority must be an integer'
      when jsonb_typeof(e.t -> 'max_attempts') not in ('number', 'null') then 'max_attempts must be an integer'
      when jsonb_typeof(e.t -> 'dedupe_key') not in ('string', 'null') then 'dedupe_key must be a string'
      when jsonb_typeof(e.t -> 'on_dedupe') not in ('string', 'null') then 'on_dedupe must be a string'
      when jsonb_typeof(e.t -> 'debounce') not in ('string', 'null') then 'debounce must be an interval string'
      when jsonb_typeof(e.t -> 'max_wait') not in ('string', 'null') then 'max_wait must be an interval string'
      when jsonb_typeof(e.t -> 'traceparent') not in ('string', 'null') then 'traceparent must be a string'
      when jsonb_typeof(e.t -> 'tracestate') not in ('string', 'null') then 'tracestate must be a string'
      else (select format('unknown field %L (fields: key, payload, run_at, priority, dedupe_key, '
                          'max_attempts, on_dedupe, debounce, max_wait, traceparent, tracestate)', f)
            from jsonb_object_keys(e.t) f
            where f not in ('key', 'payload', 'run_at', 'priority', 'dedupe_key', 'max_attempts',
                            'on_dedupe', 'debounce', 'max_wait', 'traceparent', 'tracestate')
            limit 1)
    end as msg) c
    where c.msg is not null
    order by e.ord limit 1;
    if v_bad is null then
      for r in select e.t, e.ord from jsonb_array_elements(tasks) with ordinality e (t, ord)
               order by e.ord loop
        begin
          perform (r.t ->> 'run_at')::timestamptz, (r.t ->> 'priority')::int,
            (r.t ->> 'max_attempts')::int, (r.t ->> 'debounce')::interval,
            (r.t ->> 'max_wait')::interval;
        exception when others then
          v_index := r.ord - 1;
          v_bad := sqlerrm;
        end;
        exit when v_bad is not null;
      end loop;
    end if;
    if v_bad is null then
      perform holdfast._raise('HF002', 'holdfast: tasks could not be read as enqueue items');
    end if;
  end if;

  -- The rules every enqueue checks (_task_error), then: a dedupe key belongs to one key.
  if v_bad is null then
    select u.ord - 1, holdfast._task_error(u.key, u.payload, u.priority, u.max, u.dkey, u.op,
      u.deb, u.mw)
    into v_index, v_bad
    from unnest(v_key, v_payload, v_priority, v_max, v_dkey, v_op, v_deb, v_mw) with ordinality
      u (key, payload, priority, max, dkey, op, deb, mw, ord)
    where holdfast._task_error(u.key, u.payload, u.priority, u.max, u.dkey, u.op, u.deb, u.mw)
      is not null
    order by u.ord limit 1;
  end if;
  v_traced := array_remove(v_tp, null) <> '{}' or array_remove(v_ts, null) <> '{}';
  if v_bad is null and v_traced then
    select u.ord - 1, holdfast._trace_error(u.tp, u.ts) into v_index, v_bad
    from unnest(v_tp, v_ts) with ordinality u (tp, ts, ord)
    where holdfast._trace_error(u.tp, u.ts) is not null
    order by u.ord limit 1;
  end if;
  if v_bad is null and v_deduping then
    select u.ord - 1, format('dedupe key %L is on key %L earlier in the batch, not %L',
      u.dkey, f.key, u.key)
    into v_index, v_bad
    from unnest(v_key, v_dkey) with ordinality u (key, dkey, ord)
    join (select distinct on (d.dkey) d.dkey, d.key from unnest(v_key, v_dkey) with ordinality
          d (key, dkey, ord) where d.dkey is not null order by d.dkey, d.ord) f
      on f.dkey = u.dkey
    where u.key <> f.key
    order by u.ord limit 1;
    v_hint := 'a dedupe key belongs to one key';
  end if;
  if v_bad is not null and v_hint is not null then
    raise exception using errcode = 'HF002',
      message = format('holdfast: tasks[%s]: %s', v_index, v_bad),
      detail = json_build_object('index', v_index)::text, hint = v_hint;
  elsif v_bad is not null then
    raise exception using errcode = 'HF002',
      message = format('holdfast: tasks[%s]: %s', v_index, v_bad),
      detail = json_build_object('index', v_index)::text;
  end if;

  -- Each item's start: run_at or now, later by its debounce (as enqueue_task).
  select array_agg(greatest(coalesce(u.at, now()),
      case when u.deb is not null then now() + least(u.deb, u.mw) end) order by u.ord)
  into v_at
  from unnest(v_at, v_deb, v_mw) with ordinality u (at, deb, mw, ord);

  -- Key rows, created and locked in key order, so two batches never wait on each other in a
  -- cycle; key rows before task rows, as everywhere. A row this call creates needs no lock:
  -- no one sees it before we commit, and a concurrent insert of its key waits for us. Rows
  -- pruned between the insert and the lock are created again.
  select array_agg(distinct k order by k) into v_keys from unnest(v_key) k;
  loop
    with c as (
      insert into holdfast.keys (key, lock_id)
      select k, holdfast.lock_id(k) from unnest(v_keys) k order by k
      on conflict do nothing
      returning key)
    select coalesce(v_created, '{}') || coalesce(array_agg(c.key), '{}') into v_created from c;
    select count(*) into v_locked from (
      select 1 from holdfast.keys k join unnest(v_keys) u (key) on u.key = k.key
      where not exists (select from unnest(v_created) c (key) where c.key = k.key)
      order by k.key for no key update of k) l;
    exit when v_locked + cardinality(v_created) = cardinality(v_keys);
  end loop;

  if v_deduping then
    -- Its key row is locked: a pending task of a dedupe key stays pending until we commit.
    select array_agg(f.dkey order by f.ord), array_agg(f.ord order by f.ord),
      array_agg(t.id order by f.ord),
      array_agg(coalesce(t.payload, v_payload[f.ord]) order by f.ord),
      array_agg(coalesce(t.run_at, v_at[f.ord]) order by f.ord),
      array_agg(coalesce(t.created_at, now()) order by f.ord),
      min(f.ord) filter (where t.key <> f.key)
    into g_dkey, g_first, g_id, g_payload, g_at, g_created, v_index
    from (select distinct on (d.dkey) d.dkey, d.key, d.ord from unnest(v_key, v_dkey)
          with ordinality d (key, dkey, ord) where d.dkey is not null order by d.dkey, d.ord) f
    left join holdfast.tasks t on t.dedupe_key = f.dkey and t.state = 'pending';
    if v_index is not null then
      select format('holdfast: tasks[%s]: dedupe key %L is pending on key %L, not %L',
        v_index - 1, t.dedupe_key, t.key, v_key[v_index]) into v_bad
      from holdfast.tasks t where t.dedupe_key = v_dkey[v_index] and t.state = 'pending';
      raise exception using errcode = 'HF002', message = v_bad,
        hint = 'a dedupe key belongs to one key',
        detail = json_build_object('index', v_index - 1)::text;
    end if;
    g_at0 := g_at;
    -- Every later item of a group (every item, when its task was pending already) is a
    -- deduped enqueue: fold its payload (replace, merge) and its debounce push, in input order.
    for r in
      select g.gi, u.op, u.payload, u.deb, u.mw
      from unnest(v_dkey, v_op, v_payload, v_deb, v_mw) with ordinality
        u (dkey, op, payload, deb, mw, ord)
      join unnest(g_dkey, g_first, g_id) with ordinality g (dkey, first, id, gi)
        on g.dkey = u.dkey
      where (g.id is not null or u.ord <> g.first) and (u.op <> 'keep' or u.deb is not null)
      order by u.ord
    loop
      if r.op = 'replace' then
        g_payload[r.gi] := r.payload;
      elsif r.op = 'merge' then
        g_payload[r.gi] := g_payload[r.gi] || r.payload;
      end if;
      if r.deb is not null then
        g_at[r.gi] := greatest(g_at[r.gi],
          least(now() + r.deb, coalesce(g_created[r.gi] + r.mw, now() + r.deb)));
      end if;
    end loop;
    -- The pending tasks folded into: their payload, and a pushed start moves their place too.
    update holdfast.tasks t set payload = g.payload, run_at = g.at,
      place_at = greatest(t.place_at, g.at)
    from unnest(g_id, g_payload, g_at, g_at0) g (id, payload, at, at0)
    where t.id = g.id and (t.payload is distinct from g.payload or g.at > g.at0);
    select array_agg(distinct t.key) into v_pushed
    from unnest(g_id, g_at, g_at0) g (id, at, at0) join holdfast.tasks t on t.id = g.id
    where g.at > g.at0;
    if v_pushed is not null then
      perform holdfast._refresh_keys(v_pushed);
    end if;
  end if;

  -- The new tasks: items without a dedupe key, and the first item of each dedupe key not
  -- pending yet. Ids are drawn in input order, so a key's tasks keep it (ties on place_at
  -- break by id). A key's head moves to its first new task when that one comes before the
  -- current head in (priority, place_at, id): one comparison per key, as in enqueue_task.
  with n as (
    select s.ord, nextval(v_seq) as id, s.key, s.payload, s.at, s.priority, s.dkey, s.max
    from (select u.ord, u.key, coalesce(g.payload, u.payload) as payload,
            coalesce(g.at, u.at) as at, u.priority, u.dkey,
            coalesce(u.max, v_kind.max_attempts) as max
          from unnest(v_key, v_payload, v_at, v_priority, v_dkey, v_max) with ordinality
            u (key, payload, at, priority, dkey, max, ord)
          left join unnest(g_dkey, g_first, g_id, g_payload, g_at) g (dkey, first, id, payload, at)
            on g.dkey = u.dkey
          where u.dkey is null or (g.id is null and g.first = u.ord)
          order by u.ord) s
  ), ins as (
    insert into holdfast.tasks as nt (id, kind, key, payload, run_at, place_at, priority,
                                      dedupe_key, max_attempts)
    overriding system value
    select n.id, enqueue_many.kind, n.key, n.payload, n.at, n.at, n.priority, n.dkey, n.max
    from n
    on conflict (dedupe_key) where state = 'pending' and dedupe_key is not null do nothing
    returning nt.id, nt.key, nt.priority, nt.run_at
  ), heads as (
    update holdfast.keys k set head_id = c.id, head_kind = enqueue_many.kind,
      head_priority = c.priority, emptied_at = null,
      head_run_at = greatest(c.run_at, case when v_kind.min_interval > interval '0'
        then holdfast._interval_bound(c.key, enqueue_many.kind) end)
    from (select distinct on (i.key) i.key, i.id, i.priority, i.run_at from ins i
          order by i.key, i.priority, i.run_at, i.id) c
    where k.key = c.key
      and (k.head_id is null
           or not exists (select from holdfast.tasks h where h.id = k.head_id)
           or (c.priority, c.run_at, c.id)
              < (select h.priority, h.place_at, h.id from holdfast.tasks h where h.id = k.head_id))
  )
  select array_agg(n.ord order by n.ord), array_agg(n.id order by n.ord),
    (select array_agg(ins.id) from ins)
  into v_new_ord, v_new_id, v_ins_id
  from n;
  -- Fewer rows than items: a concurrent producer committed a dedupe key of ours on another key.
  if cardinality(v_ins_id) is distinct from cardinality(v_new_id) then
    select n.ord - 1 into v_index from unnest(v_new_ord, v_new_id) n (ord, id)
    where n.id <> all (coalesce(v_ins_id, '{}')) order by n.ord limit 1;
    raise exception using errcode = 'HF002',
      message = format('holdfast: tasks[%s]: dedupe key %L is pending on another key',
        v_index, v_dkey[v_index + 1]),
      hint = 'a dedupe key belongs to one key',
      detail = json_build_object('index', v_index)::text;
  end if;

  -- Traced items: the new tasks keep their producer's context (a deduped item adds none).
  if v_traced then
    insert into holdfast.task_traces (task_id, traceparent, tracestate)
    select n.id, v_tp[n.ord], v_ts[n.ord] from unnest(v_new_ord, v_new_id) n (ord, id)
    where v_tp[n.ord] is not null;
  end if;

  perform pg_notify('holdfast', enqueue_many.kind);
  return query
  select coalesce(n.id, c.id, g.id), u.dkey is not null and n.id is null
  from unnest(v_dkey) with ordinality u (dkey, ord)
  left join unnest(v_new_ord, v_new_id) n (ord, id) on n.ord = u.ord
  left join unnest(g_dkey, g_first, g_id) g (dkey, first, id) on g.dkey = u.dkey
  left join unnest(v_new_ord, v_new_id) c (ord, id) on c.ord = g.first and g.id is null
  order by u.ord;
end $$;
select holdfast._grant('execute', 'function holdfast.enqueue_many(text, jsonb)',
  'holdfast_producer');
