CREATE INDEX keys_lock_id ON holdfast.keys USING btree (lock_id);

CREATE INDEX keys_next_run_at ON holdfast.keys USING btree (head_kind, head_run_at) WHERE ((head_id IS NOT NULL) AND (NOT busy));

CREATE INDEX keys_ready_kind ON holdfast.keys USING btree (head_kind, head_priority, head_run_at, head_id) WHERE ((head_id IS NOT NULL) AND (NOT busy));

CREATE INDEX tasks_key_pending ON holdfast.tasks USING btree (key, priority, run_at, id) WHERE (state = 'pending'::text);

CREATE INDEX tasks_kind_open ON holdfast.tasks USING btree (kind, state) WHERE (state = ANY (ARRAY['pending'::text, 'running'::text, 'failed'::text]));

CREATE INDEX tasks_running ON holdfast.tasks USING btree (key) WHERE (state = 'running'::text);

CREATE OR REPLACE FUNCTION holdfast._backoff(attempt integer, seed bigint DEFAULT NULL::bigint)
 RETURNS interval
 LANGUAGE sql
AS $function$
  select interval '1 second' * least(power(2, greatest(attempt - 1, 0)), 3600)
    * (0.75 + 0.5 * case when seed is null then random()
                         else (hashint8(seed)::bigint & 1048575) / 1048576.0 end)
$function$
;

CREATE OR REPLACE FUNCTION holdfast._finish(task_id bigint, fence bigint, outcome text, error jsonb, retry_in interval)
 RETURNS boolean
 LANGUAGE sql
AS $function$
  select not exists (select 1 from holdfast._finish_many(array[task_id], array[fence], outcome,
    error, retry_in))
$function$
;

CREATE OR REPLACE FUNCTION holdfast._finish_many(ids bigint[], fences bigint[], outcome text, error jsonb, retry_in interval)
 RETURNS SETOF bigint
 LANGUAGE plpgsql
 SET plan_cache_mode TO 'force_generic_plan'
AS $function$
#variable_conflict use_column
declare
  v_keys text[];
  v_rejected bigint[];
  v_missing bigint;
  v_pid int := pg_backend_pid();
  v_started timestamptz := holdfast._session_started();
begin
  select i into v_missing from unnest(ids) i
  where not exists (select 1 from holdfast.tasks t where t.id = i) limit 1;
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
    select t.id, t.key, t.kind, t.attempt, t.fence, t.worker, t.holder_pid, t.started_at,
      case when _finish_many.outcome = 'released' then 'pending'
        else holdfast._next_state(_finish_many.outcome, t.cancel_requested, t.attempt, t.max_attempts)
      end as next
    from d cross join lateral (select * from holdfast.tasks t where t.id = d.id) t
    where t.fence = d.fence and t.state = 'running' and t.holder_pid = v_pid
      and t.holder_started = v_started
  ),
  upd as (
    update holdfast.tasks u set
      state = t.next,
      attempt = case when _finish_many.outcome = 'released' then u.attempt - 1 else u.attempt end,
      run_at = case when t.next <> 'pending' or _finish_many.outcome = 'released' then u.run_at
                    else now() + coalesce(retry_in, holdfast._backoff(t.attempt, t.fence)) end,
      finished_at = case when t.next = 'pending' then null else now() end,
      last_error = coalesce(_finish_many.error, u.last_error)
    from t where u.id = t.id
  ),
  att as (
    insert into holdfast.attempts as a (task_id, attempt, fence, worker, pid, started_at,
                                        finished_at, outcome, error)
    select t.id, t.attempt, t.fence, t.worker, t.holder_pid, t.started_at, now(),
      case when t.next = 'cancelled' then 'cancelled' else _finish_many.outcome end,
      _finish_many.error
    from t where _finish_many.outcome <> 'released'
    -- An attempt that was running when this migration ran has its row already.
    on conflict (task_id, attempt) do update set finished_at = excluded.finished_at,
      outcome = excluded.outcome, error = excluded.error
  ),
  -- A success starts the kind's minimum interval on this key (read by the key's head).
  kk as (
    insert into holdfast.key_kinds as kk (key, kind, last_succeeded_at)
    select distinct t.key, t.kind, now() from t join holdfast.kinds kd on kd.kind = t.kind
    where t.next = 'succeeded' and kd.min_interval > interval '0'
    on conflict (key, kind) do update set last_succeeded_at = excluded.last_succeeded_at
  )
  select (select array_agg(distinct t.key) from t),
         (select array_agg(d.id) from d where not exists (select 1 from t where t.id = d.id))
  into v_keys, v_rejected;

  if v_keys is not null then
    -- requeue: each key's next task waits behind keys that were ready before this run ended
    -- (a released task keeps its place).
    perform holdfast._refresh_keys(v_keys, _finish_many.outcome <> 'released');
    -- A key stays locked while another task of it still runs here (the rest of a batch).
    perform pg_advisory_unlock(k.lock_id) from holdfast.keys k
    where k.key = any (v_keys) and not k.busy;
    -- Also when the next task is due later (a retry's backoff, a minimum interval): idle
    -- workers then set their timers for it, as for a delayed enqueue. Without this, only this
    -- worker would know, and if it stopped, the task would wait for the others' rescan.
    perform pg_notify('holdfast', k.head_kind) from holdfast.keys k
    where k.key = any (v_keys) and k.head_id is not null and not k.busy;
  end if;
  return query select unnest(v_rejected);
end $function$
;

CREATE OR REPLACE FUNCTION holdfast._interval_bound(k text, kd text)
 RETURNS timestamp with time zone
 LANGUAGE plpgsql
 STABLE
AS $function$
begin
  return (select kk.last_succeeded_at + kinds.min_interval
    from holdfast.key_kinds kk join holdfast.kinds on kinds.kind = kk.kind
    where kk.key = k and kk.kind = kd and kinds.min_interval > interval '0');
end $function$
;

CREATE OR REPLACE FUNCTION holdfast._locked_task(task_id bigint)
 RETURNS holdfast.tasks
 LANGUAGE plpgsql
AS $function$
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
end $function$
;

CREATE OR REPLACE FUNCTION holdfast._next_fence(current bigint)
 RETURNS bigint
 LANGUAGE sql
AS $function$ select greatest(current + 1, (extract(epoch from clock_timestamp()) * 1000)::bigint * 1024) $function$
;

CREATE OR REPLACE FUNCTION holdfast._next_state(outcome text, cancel_requested boolean, attempt integer, max_attempts integer)
 RETURNS text
 LANGUAGE sql
 IMMUTABLE
AS $function$
  select case
    when outcome = 'succeeded' then 'succeeded'
    when cancel_requested then 'cancelled'
    when attempt >= max_attempts then 'failed'
    else 'pending' end
$function$
;

CREATE OR REPLACE FUNCTION holdfast._notify_if_ready(k text)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
begin
  perform pg_notify('holdfast', head_kind) from holdfast.keys
  where key = k and head_id is not null and not busy and head_run_at <= now();
end $function$
;

CREATE OR REPLACE FUNCTION holdfast._raise(code text, msg text, hint text DEFAULT NULL::text)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
begin
  if hint is null then
    raise exception using errcode = code, message = msg;
  end if;
  raise exception using errcode = code, message = msg, hint = hint;
end $function$
;

CREATE OR REPLACE FUNCTION holdfast._refresh_key(k text, requeue boolean DEFAULT false)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
begin
  perform holdfast._refresh_keys(array[k], requeue);
end $function$
;

CREATE OR REPLACE FUNCTION holdfast._refresh_keys(ks text[], requeue boolean DEFAULT false)
 RETURNS void
 LANGUAGE plpgsql
 SET plan_cache_mode TO 'force_generic_plan'
AS $function$
begin
  update holdfast.keys k set
    busy = exists (select 1 from holdfast.tasks t where t.key = k.key and t.state = 'running'),
    (head_id, head_kind, head_priority, head_run_at) = (
      select t.id, t.kind, t.priority,
        greatest(t.run_at, kk.last_succeeded_at + kd.min_interval, case when requeue then now() end)
      from holdfast.tasks t
      join holdfast.kinds kd on kd.kind = t.kind
      left join holdfast.key_kinds kk on kk.key = t.key and kk.kind = t.kind
        and kd.min_interval > interval '0'
      where t.key = k.key and t.state = 'pending'
      order by t.priority, t.run_at, t.id
      limit 1)
  where k.key = any (ks);
end $function$
;

CREATE OR REPLACE FUNCTION holdfast._session_started()
 RETURNS timestamp with time zone
 LANGUAGE plpgsql
 STABLE
AS $function$
declare
  v text := current_setting('holdfast.session_started', true);
begin
  if v is null or v = '' then
    -- Microseconds since the epoch: exact, and independent of DateStyle and TimeZone.
    v := (select (extract(epoch from backend_start) * 1000000)::bigint
          from pg_stat_get_activity(pg_backend_pid()))::text;
    perform set_config('holdfast.session_started', v, false);
  end if;
  return timestamptz 'epoch' + v::bigint * interval '1 microsecond';
end $function$
;

CREATE OR REPLACE FUNCTION holdfast.assert_fence(key text, fence bigint)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
end $function$
;

CREATE OR REPLACE FUNCTION holdfast.cancel(id bigint)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
end $function$
;

CREATE OR REPLACE FUNCTION holdfast.claim(kinds text[], worker text, max_tasks integer DEFAULT 1, max_keys integer DEFAULT NULL::integer)
 RETURNS SETOF holdfast.tasks
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET plan_cache_mode TO 'force_generic_plan'
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
#variable_conflict use_column
declare
  v_keys text[];
  v_fences bigint[];
begin
  if max_tasks is null or max_tasks < 1 or (max_keys is not null and max_keys < 1) then
    return;
  end if;
  -- A lost claim commit is harmless: the lock dies with the session in a crash, and fences
  -- stay monotonic (see _next_fence). This keeps the wake path free of a WAL flush.
  perform set_config('synchronous_commit', 'off', true);

  -- Ready keys, row-locked before their advisory lock is tried: the row lock re-checks them
  -- (advisory locks ignore MVCC) and SKIP LOCKED never waits for an enqueue or a handler's
  -- assert_fence. The LIMIT comes first, so each key is tried once and every key locked here
  -- is used below. A key this session holds is busy, so no lock is taken twice. (With several
  -- kinds, up to max_keys rows per kind are row-locked; the unused ones only until commit.)
  -- Per kind (keys_ready_kind), so that ready keys of kinds this worker does not handle are
  -- never read: a worker's claim costs the same with none or a million of them. A key appears
  -- once: kinds are deduplicated, and a key has one head kind.
  with c as materialized (
    select k.key, k.lock_id, k.fence, k.head_priority, k.head_run_at, k.head_id
    from (select distinct unnest(kinds)) as kd (kind)
    cross join lateral (
      select k.key, k.lock_id, k.fence, k.head_priority, k.head_run_at, k.head_id
      from holdfast.keys k
      where k.head_kind = kd.kind and k.head_id is not null and not k.busy
        and k.head_run_at <= now()
      order by k.head_priority, k.head_run_at, k.head_id
      limit least(max_tasks, coalesce(max_keys, max_tasks))
      for update of k skip locked
    ) k
    order by k.head_priority, k.head_run_at, k.head_id
    limit least(max_tasks, coalesce(max_keys, max_tasks))
  )
  select array_agg(c.key order by c.head_priority, c.head_run_at, c.head_id),
         array_agg(holdfast._next_fence(c.fence) order by c.head_priority, c.head_run_at, c.head_id)
  into v_keys, v_fences
  from c where pg_try_advisory_lock(c.lock_id);
  if v_keys is null then
    return;
  end if;

  return query
  with g as (
    select g.key, g.fence, g.ord, k.head_id, k.head_kind, least(kd.batch_max, max_tasks) as batch
    from unnest(v_keys, v_fences) with ordinality as g (key, fence, ord)
    join holdfast.keys k on k.key = g.key
    join holdfast.kinds kd on kd.kind = k.head_kind
  ),
  -- Per key: the head and the tasks of its kind right behind it, in the key's order (FIFO per
  -- key), bounded by the batch size: no scan over the key's other pending tasks.
  p as (
    select g.key, g.fence, g.ord, q.id, q.n
    from g cross join lateral (
      select s.id, s.n from (
        select t.id, row_number() over w as n,
          bool_and(t.kind = g.head_kind and (t.id = g.head_id or t.run_at <= now())) over w as ok
        from (select * from holdfast.tasks t where t.key = g.key and t.state = 'pending'
              order by t.priority, t.run_at, t.id limit g.batch) t
        window w as (order by t.priority, t.run_at, t.id)
      ) s where s.ok
    ) q
    order by g.ord, q.n
    limit max_tasks
  ),
  upd as (
    update holdfast.tasks u set
      state = 'running', attempt = u.attempt + 1, fence = p.fence, worker = claim.worker,
      holder_pid = pg_backend_pid(), holder_started = holdfast._session_started(),
      started_at = now(), cancel_requested = false
    from p where u.id = p.id
    returning u.*
  ),
  kup as (
    update holdfast.keys k set busy = true, fence = p.fence
    from (select distinct p.key, p.fence from p) p where k.key = p.key
  )
  select upd.* from upd join p on p.id = upd.id order by p.ord, p.n;

  -- A key locked above that yielded no task (its head changed under a concurrent commit, or
  -- max_tasks ran out): give it back and repair its head.
  perform pg_advisory_unlock(k.lock_id), holdfast._refresh_key(k.key)
  from holdfast.keys k where k.key = any (v_keys) and not k.busy;
end $function$
;

CREATE OR REPLACE FUNCTION holdfast.complete(id bigint, fence bigint)
 RETURNS boolean
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$ select holdfast._finish(id, fence, 'succeeded', null, null) $function$
;

CREATE OR REPLACE FUNCTION holdfast.complete_many(ids bigint[], fences bigint[])
 RETURNS SETOF bigint
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
  select holdfast._finish_many(ids, fences, 'succeeded', null, null)
$function$
;

CREATE OR REPLACE FUNCTION holdfast.define_kind(kind text, max_attempts integer DEFAULT NULL::integer, min_interval interval DEFAULT NULL::interval, batch_max integer DEFAULT NULL::integer)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
end $function$
;

CREATE OR REPLACE FUNCTION holdfast.enqueue(kind text, key text, payload jsonb DEFAULT '{}'::jsonb, run_at timestamp with time zone DEFAULT NULL::timestamp with time zone, priority integer DEFAULT 0, dedupe_key text DEFAULT NULL::text, max_attempts integer DEFAULT NULL::integer, on_dedupe text DEFAULT 'keep'::text)
 RETURNS bigint
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
  select e.id from holdfast.enqueue_task(kind, key, payload, run_at, priority, dedupe_key,
    max_attempts, on_dedupe) e
$function$
;

CREATE OR REPLACE FUNCTION holdfast.enqueue_task(kind text, key text, payload jsonb DEFAULT '{}'::jsonb, run_at timestamp with time zone DEFAULT NULL::timestamp with time zone, priority integer DEFAULT 0, dedupe_key text DEFAULT NULL::text, max_attempts integer DEFAULT NULL::integer, on_dedupe text DEFAULT 'keep'::text)
 RETURNS TABLE(id bigint, deduped boolean)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
end $function$
;

CREATE OR REPLACE FUNCTION holdfast.fail(id bigint, fence bigint, error text, retry_in interval DEFAULT NULL::interval, stack text DEFAULT NULL::text)
 RETURNS boolean
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
  select holdfast._finish(id, fence, 'failed',
    jsonb_strip_nulls(jsonb_build_object('message', error, 'stack', stack)), retry_in)
$function$
;

CREATE OR REPLACE FUNCTION holdfast.lock_id(key text)
 RETURNS bigint
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE STRICT
AS $function$ select hashtextextended(key, 4714072861207531113) $function$
;

CREATE OR REPLACE FUNCTION holdfast.next_run_at(kinds text[])
 RETURNS timestamp with time zone
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
  select min(x.at) from (select distinct unnest(kinds)) as kd (kind)
  cross join lateral (
    select k.head_run_at as at from holdfast.keys k
    where k.head_kind = kd.kind and k.head_id is not null and not k.busy
    order by k.head_run_at limit 1) x
$function$
;

CREATE OR REPLACE FUNCTION holdfast.release(ids bigint[], fences bigint[])
 RETURNS SETOF bigint
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
  select holdfast._finish_many(ids, fences, 'released', null, null)
$function$
;

CREATE OR REPLACE FUNCTION holdfast.retry(id bigint, extra_attempts integer DEFAULT NULL::integer)
 RETURNS boolean
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
end $function$
;

CREATE OR REPLACE FUNCTION holdfast.settle(done_ids bigint[], done_fences bigint[], kinds text[], worker text, max_tasks integer, max_keys integer DEFAULT NULL::integer)
 RETURNS TABLE(rejected bigint, task holdfast.tasks)
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
#variable_conflict use_column
declare
  v_done boolean := coalesce(cardinality(done_ids), 0) > 0;
begin
  if v_done then
    return query select r, null::holdfast.tasks from holdfast.complete_many(done_ids, done_fences) r;
  end if;
  if coalesce(max_tasks, 0) > 0 then
    return query select null::bigint, c
      from holdfast.claim(kinds, settle.worker, max_tasks, max_keys) c;
  end if;
  if v_done then
    perform set_config('synchronous_commit', 'on', true);
  end if;
end $function$
;

CREATE OR REPLACE FUNCTION holdfast.sweep()
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
      v_state := holdfast._next_state('lost', t.cancel_requested, t.attempt, t.max_attempts);
      update holdfast.tasks u set
        state = v_state,
        run_at = case when v_state = 'pending' then now() else u.run_at end,
        finished_at = case when v_state = 'pending' then null else now() end,
        last_error = jsonb_build_object('message', 'holder session ended during the run')
      where u.id = t.id;
      insert into holdfast.attempts as a (task_id, attempt, fence, worker, pid, started_at,
                                          finished_at, outcome, error)
      values (t.id, t.attempt, t.fence, t.worker, t.holder_pid, t.started_at, now(), 'lost',
              jsonb_build_object('message', 'holder session ended during the run'))
      on conflict (task_id, attempt) do update set finished_at = excluded.finished_at,
        outcome = excluded.outcome, error = excluded.error;
      perform holdfast._refresh_key(t.key);
      perform holdfast._notify_if_ready(t.key);
      n := n + 1;
    end if;
    perform pg_advisory_unlock(r.lock_id);
  end loop;
  return n;
end $function$
;

CREATE OR REPLACE FUNCTION holdfast.try_lead()
 RETURNS boolean
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$ select pg_try_advisory_lock(1752132708, 1) $function$
;

CREATE UNIQUE INDEX attempts_pkey ON holdfast.attempts USING btree (task_id, attempt);

CREATE UNIQUE INDEX key_kinds_pkey ON holdfast.key_kinds USING btree (key, kind);

CREATE UNIQUE INDEX keys_pkey ON holdfast.keys USING btree (key);

CREATE UNIQUE INDEX kinds_pkey ON holdfast.kinds USING btree (kind);

CREATE UNIQUE INDEX migrations_pkey ON holdfast.migrations USING btree (name);

CREATE UNIQUE INDEX tasks_dedupe_pending ON holdfast.tasks USING btree (dedupe_key) WHERE ((state = 'pending'::text) AND (dedupe_key IS NOT NULL));

CREATE UNIQUE INDEX tasks_pkey ON holdfast.tasks USING btree (id);

constraint attempts_outcome_check on attempts: CHECK ((outcome = ANY (ARRAY['succeeded'::text, 'failed'::text, 'lost'::text, 'cancelled'::text])));

constraint attempts_pkey on attempts: PRIMARY KEY (task_id, attempt);

constraint attempts_task_id_fkey on attempts: FOREIGN KEY (task_id) REFERENCES holdfast.tasks(id) ON DELETE CASCADE;

constraint key_kinds_key_fkey on key_kinds: FOREIGN KEY (key) REFERENCES holdfast.keys(key);

constraint key_kinds_kind_fkey on key_kinds: FOREIGN KEY (kind) REFERENCES holdfast.kinds(kind);

constraint key_kinds_pkey on key_kinds: PRIMARY KEY (key, kind);

constraint keys_key_check on keys: CHECK (((key <> ''::text) AND (octet_length(key) <= 1000)));

constraint keys_pkey on keys: PRIMARY KEY (key);

constraint kinds_batch_max_check on kinds: CHECK (((batch_max >= 1) AND (batch_max <= 1000)));

constraint kinds_kind_check on kinds: CHECK ((kind ~ '^[A-Za-z0-9_.:-]{1,100}$'::text));

constraint kinds_max_attempts_check on kinds: CHECK ((max_attempts >= 1));

constraint kinds_min_interval_check on kinds: CHECK ((min_interval >= '00:00:00'::interval));

constraint kinds_pkey on kinds: PRIMARY KEY (kind);

constraint migrations_pkey on migrations: PRIMARY KEY (name);

constraint tasks_key_fkey on tasks: FOREIGN KEY (key) REFERENCES holdfast.keys(key);

constraint tasks_kind_fkey on tasks: FOREIGN KEY (kind) REFERENCES holdfast.kinds(kind);

constraint tasks_max_attempts_check on tasks: CHECK ((max_attempts >= 1));

constraint tasks_pkey on tasks: PRIMARY KEY (id);

constraint tasks_state_check on tasks: CHECK ((state = ANY (ARRAY['pending'::text, 'running'::text, 'succeeded'::text, 'failed'::text, 'cancelled'::text])));

table attempts (task_id bigint not null, attempt integer not null, fence bigint not null, worker text, pid integer, started_at timestamp with time zone not null default now(), finished_at timestamp with time zone, outcome text, error jsonb);

table key_kinds (key text not null, kind text not null, last_succeeded_at timestamp with time zone not null);

table keys (key text not null, lock_id bigint not null, fence bigint not null default 0, busy boolean not null default false, head_id bigint, head_kind text, head_priority integer, head_run_at timestamp with time zone);

table kinds (kind text not null, max_attempts integer not null default 5, min_interval interval not null default '00:00:00'::interval, batch_max integer not null default 1, created_at timestamp with time zone not null default now());

table migrations (name text not null, applied_at timestamp with time zone not null default now());

table tasks (id bigint not null, kind text not null, key text not null, payload jsonb not null default '{}'::jsonb, state text not null default 'pending'::text, priority integer not null default 0, run_at timestamp with time zone not null default now(), attempt integer not null default 0, max_attempts integer not null, dedupe_key text, fence bigint, worker text, holder_pid integer, holder_started timestamp with time zone, cancel_requested boolean not null default false, last_error jsonb, created_at timestamp with time zone not null default now(), started_at timestamp with time zone, finished_at timestamp with time zone);

view dead_letters as  SELECT id,
    kind,
    key,
    payload,
    attempt,
    max_attempts,
    last_error,
    created_at,
    finished_at,
    ( SELECT jsonb_agg(jsonb_build_object('attempt', a.attempt, 'worker', a.worker, 'started_at', a.started_at, 'finished_at', a.finished_at, 'outcome', a.outcome, 'error', a.error) ORDER BY a.attempt) AS jsonb_agg
           FROM holdfast.attempts a
          WHERE (a.task_id = t.id)) AS attempts
   FROM holdfast.tasks t
  WHERE (state = 'failed'::text);

view locks as  SELECT k.key,
    k.lock_id,
    l.granted,
    l.pid,
    a.application_name,
    a.client_addr,
    a.backend_start,
    t.id AS task_id,
    t.kind,
    t.attempt,
    t.fence,
    t.worker,
    t.started_at,
    (now() - t.started_at) AS held_for
   FROM (((pg_locks l
     JOIN holdfast.keys k ON (((l.locktype = 'advisory'::text) AND (l.objsubid = 1) AND (k.lock_id = (((l.classid)::bigint << 32) | (l.objid)::bigint)))))
     LEFT JOIN pg_stat_activity a ON ((a.pid = l.pid)))
     LEFT JOIN LATERAL ( SELECT t_1.id,
            t_1.kind,
            t_1.key,
            t_1.payload,
            t_1.state,
            t_1.priority,
            t_1.run_at,
            t_1.attempt,
            t_1.max_attempts,
            t_1.dedupe_key,
            t_1.fence,
            t_1.worker,
            t_1.holder_pid,
            t_1.holder_started,
            t_1.cancel_requested,
            t_1.last_error,
            t_1.created_at,
            t_1.started_at,
            t_1.finished_at
           FROM holdfast.tasks t_1
          WHERE ((t_1.key = k.key) AND (t_1.state = 'running'::text) AND (t_1.holder_pid = l.pid))
          ORDER BY t_1.id
         LIMIT 1) t ON (l.granted))
  WHERE (l.database = ( SELECT pg_database.oid
           FROM pg_database
          WHERE (pg_database.datname = current_database())));

view orphans as  SELECT id,
    kind,
    key,
    attempt,
    fence,
    worker,
    holder_pid,
    started_at
   FROM holdfast.tasks t
  WHERE ((state = 'running'::text) AND (NOT (EXISTS ( SELECT 1
           FROM pg_stat_activity a
          WHERE ((a.pid = t.holder_pid) AND ((a.backend_start IS NULL) OR (a.backend_start = t.holder_started)))))));
