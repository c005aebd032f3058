CREATE INDEX keys_lock_id ON holdfast.keys USING btree (lock_id);

CREATE INDEX keys_next_run_at ON holdfast.keys USING btree (head_run_at) WHERE ((head_id IS NOT NULL) AND (NOT busy));

CREATE INDEX keys_ready ON holdfast.keys USING btree (head_priority, head_run_at, head_id) WHERE ((head_id IS NOT NULL) AND (NOT busy));

CREATE INDEX tasks_key_pending ON holdfast.tasks USING btree (key, priority, run_at, id) WHERE (state = 'pending'::text);

CREATE INDEX tasks_kind_state ON holdfast.tasks USING btree (kind, state);

CREATE INDEX tasks_running ON holdfast.tasks USING btree (key) WHERE (state = 'running'::text);

CREATE OR REPLACE FUNCTION holdfast._backoff(attempt integer)
 RETURNS interval
 LANGUAGE sql
AS $function$
  select interval '1 second' * least(power(2, greatest(attempt - 1, 0)), 3600) * (0.75 + random() * 0.5)
$function$
;

CREATE OR REPLACE FUNCTION holdfast._finish(task_id bigint, fence bigint, outcome text, error jsonb, retry_in interval)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
#variable_conflict use_column
declare
  t holdfast.tasks;
  v_state text;
begin
  select * into t from holdfast.tasks where id = _finish.task_id;
  if not found then
    perform holdfast._raise('HF003', format('holdfast: no task with id %s', _finish.task_id));
  end if;
  perform 1 from holdfast.keys k where k.key = t.key for no key update;
  select * into t from holdfast.tasks where id = _finish.task_id;
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
                  then now() + coalesce(_finish.retry_in, holdfast._backoff(t.attempt)) else u.run_at end,
    finished_at = case when v_state = 'pending' then null else now() end,
    last_error = coalesce(_finish.error, u.last_error)
  where u.id = t.id;

  update holdfast.attempts a set finished_at = now(),
    outcome = case when v_state = 'cancelled' then 'cancelled' else _finish.outcome end,
    error = _finish.error
  where a.task_id = t.id and a.attempt = t.attempt;

  perform holdfast._refresh_key(t.key);
  perform holdfast._release(t.key);
  perform holdfast._notify_if_ready(t.key);
  return true;
end $function$
;

CREATE OR REPLACE FUNCTION holdfast._next_fence(current bigint)
 RETURNS bigint
 LANGUAGE sql
AS $function$ select greatest(current + 1, (extract(epoch from clock_timestamp()) * 1000)::bigint * 1024) $function$
;

CREATE OR REPLACE FUNCTION holdfast._notify_if_ready(k text)
 RETURNS void
 LANGUAGE sql
AS $function$
  select pg_notify('holdfast', head_kind) from holdfast.keys
  where key = k and head_id is not null and not busy and head_run_at <= now()
$function$
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

CREATE OR REPLACE FUNCTION holdfast._refresh_key(k text)
 RETURNS void
 LANGUAGE sql
AS $function$
  update holdfast.keys set
    busy = exists (select 1 from holdfast.tasks t where t.key = k and t.state = 'running'),
    (head_id, head_kind, head_priority, head_run_at) = (
      select t.id, t.kind, t.priority, t.run_at from holdfast.tasks t
      where t.key = k and t.state = 'pending'
      order by t.priority, t.run_at, t.id
      limit 1)
  where key = k
$function$
;

CREATE OR REPLACE FUNCTION holdfast._release(k text)
 RETURNS void
 LANGUAGE sql
AS $function$
  select pg_advisory_unlock(holdfast.lock_id(k))
  where not exists (
    select 1 from holdfast.tasks t
    where t.key = k and t.state = 'running' and t.holder_pid = pg_backend_pid())
$function$
;

CREATE OR REPLACE FUNCTION holdfast._session_started()
 RETURNS timestamp with time zone
 LANGUAGE sql
 STABLE
AS $function$ select backend_start from pg_stat_get_activity(pg_backend_pid()) $function$
;

CREATE OR REPLACE FUNCTION holdfast.assert_fence(key text, fence bigint)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
#variable_conflict use_column
declare
  v_fence bigint;
begin
  select k.fence into v_fence from holdfast.keys k where k.key = assert_fence.key for key share;
  if v_fence is distinct from assert_fence.fence then
    perform holdfast._raise('HF004', format('holdfast: stale fence %s for key %L (current %s)',
      assert_fence.fence, assert_fence.key, coalesce(v_fence::text, 'none')),
      'a newer claim of this key exists: this run lost its lock and must stop');
  end if;
end $function$
;

CREATE OR REPLACE FUNCTION holdfast.cancel(id bigint)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
#variable_conflict use_column
declare
  t holdfast.tasks;
begin
  select * into t from holdfast.tasks where id = cancel.id;
  if not found then
    perform holdfast._raise('HF003', format('holdfast: no task with id %s', cancel.id));
  end if;
  perform 1 from holdfast.keys k where k.key = t.key for no key update;
  select * into t from holdfast.tasks where id = cancel.id;
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

CREATE OR REPLACE FUNCTION holdfast.claim(kinds text[], worker text, max_tasks integer DEFAULT 1)
 RETURNS SETOF holdfast.tasks
 LANGUAGE plpgsql
AS $function$
#variable_conflict use_column
declare
  c record;
  t holdfast.tasks;
  v_fence bigint;
  v_pid int := pg_backend_pid();
  v_started timestamptz := holdfast._session_started();
  v_batch int;
  v_before int;
  n int := 0;
begin
  if max_tasks is null or max_tasks < 1 then
    return;
  end if;
  -- A lost claim commit is harmless: the lock dies with the session in a crash, and fences
  -- stay monotonic (see _next_fence). This keeps the wake path free of a WAL flush.
  perform set_config('synchronous_commit', 'off', true);

  for c in
    select k.key, k.lock_id from holdfast.keys k
    where k.head_id is not null and not k.busy
      and k.head_run_at <= now() and k.head_kind = any (kinds)
    order by k.head_priority, k.head_run_at, k.head_id
  loop
    exit when n >= max_tasks;
    -- One key at a time, never in a WHERE with LIMIT: no lock is taken that is not used.
    continue when not pg_try_advisory_lock(c.lock_id);

    -- Re-check under the key row lock: advisory locks ignore MVCC, so the scan may be stale.
    -- A busy key is skipped, which also covers our own session re-taking a lock it holds.
    -- SKIP LOCKED: a handler's assert_fence may hold the row; never block the lock session.
    perform 1 from holdfast.keys k
    where k.key = c.key and k.head_id is not null and not k.busy
      and k.head_run_at <= now() and k.head_kind = any (kinds)
    for update skip locked;
    if not found then
      perform pg_advisory_unlock(c.lock_id);
      continue;
    end if;

    update holdfast.keys k set fence = holdfast._next_fence(k.fence)
    where k.key = c.key returning k.fence into v_fence;

    select least(kd.batch_max, max_tasks - n) into v_batch
    from holdfast.keys k join holdfast.kinds kd on kd.kind = k.head_kind where k.key = c.key;

    v_before := n;
    for t in
      update holdfast.tasks u set
        state = 'running', attempt = u.attempt + 1, fence = v_fence, worker = claim.worker,
        holder_pid = v_pid, holder_started = v_started, started_at = now()
      where u.id in (
        select p.id from holdfast.tasks p join holdfast.keys k on k.key = p.key
        where p.key = c.key and p.state = 'pending' and p.run_at <= now() and p.kind = k.head_kind
        order by p.priority, p.run_at, p.id
        limit v_batch
        for update of p)
      returning u.*
    loop
      insert into holdfast.attempts (task_id, attempt, fence, worker, pid)
      values (t.id, t.attempt, v_fence, claim.worker, v_pid);
      n := n + 1;
      return next t;
    end loop;

    if n = v_before then
      perform pg_advisory_unlock(c.lock_id);
    end if;
    perform holdfast._refresh_key(c.key);
  end loop;
end $function$
;

CREATE OR REPLACE FUNCTION holdfast.complete(id bigint, fence bigint)
 RETURNS boolean
 LANGUAGE sql
AS $function$ select holdfast._finish(id, fence, 'succeeded', null, null) $function$
;

CREATE OR REPLACE FUNCTION holdfast.complete_many(ids bigint[], fences bigint[])
 RETURNS SETOF bigint
 LANGUAGE sql
AS $function$
  select d.id from unnest(ids, fences) as d(id, fence)
  where not holdfast._finish(d.id, d.fence, 'succeeded', null, null)
$function$
;

CREATE OR REPLACE FUNCTION holdfast.define_kind(kind text, max_attempts integer DEFAULT NULL::integer, min_interval interval DEFAULT NULL::interval, batch_max integer DEFAULT NULL::integer)
 RETURNS void
 LANGUAGE plpgsql
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

CREATE OR REPLACE FUNCTION holdfast.enqueue(kind text, key text, payload jsonb DEFAULT '{}'::jsonb, run_at timestamp with time zone DEFAULT NULL::timestamp with time zone, priority integer DEFAULT 0, dedupe_key text DEFAULT NULL::text, max_attempts integer DEFAULT NULL::integer)
 RETURNS bigint
 LANGUAGE sql
AS $function$
  select e.id from holdfast.enqueue_task(kind, key, payload, run_at, priority, dedupe_key, max_attempts) e
$function$
;

CREATE OR REPLACE FUNCTION holdfast.enqueue_task(kind text, key text, payload jsonb DEFAULT '{}'::jsonb, run_at timestamp with time zone DEFAULT NULL::timestamp with time zone, priority integer DEFAULT 0, dedupe_key text DEFAULT NULL::text, max_attempts integer DEFAULT NULL::integer)
 RETURNS TABLE(id bigint, deduped boolean)
 LANGUAGE plpgsql
AS $function$
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
end $function$
;

CREATE OR REPLACE FUNCTION holdfast.fail(id bigint, fence bigint, error text, retry_in interval DEFAULT NULL::interval, stack text DEFAULT NULL::text)
 RETURNS boolean
 LANGUAGE sql
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
 STABLE
AS $function$
  select min(k.head_run_at) from holdfast.keys k
  where k.head_id is not null and not k.busy and k.head_kind = any (kinds)
$function$
;

CREATE OR REPLACE FUNCTION holdfast.sweep()
 RETURNS integer
 LANGUAGE plpgsql
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
      v_state := case
        when t.cancel_requested then 'cancelled'
        when t.attempt >= t.max_attempts then 'failed'
        else 'pending' end;
      update holdfast.tasks u set
        state = v_state,
        run_at = case when v_state = 'pending' then now() else u.run_at end,
        finished_at = case when v_state = 'pending' then null else now() end,
        last_error = jsonb_build_object('message', 'holder session ended during the run')
      where u.id = t.id;
      update holdfast.attempts a set finished_at = now(), outcome = 'lost',
        error = jsonb_build_object('message', 'holder session ended during the run')
      where a.task_id = t.id and a.attempt = t.attempt;
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
AS $function$ select pg_try_advisory_lock(1752132708, 1) $function$
;

CREATE UNIQUE INDEX attempts_pkey ON holdfast.attempts USING btree (task_id, attempt);

CREATE UNIQUE INDEX keys_pkey ON holdfast.keys USING btree (key);

CREATE UNIQUE INDEX kinds_pkey ON holdfast.kinds USING btree (kind);

CREATE UNIQUE INDEX migrations_pkey ON holdfast.migrations USING btree (name);

CREATE UNIQUE INDEX tasks_dedupe_pending ON holdfast.tasks USING btree (dedupe_key) WHERE ((state = 'pending'::text) AND (dedupe_key IS NOT NULL));

CREATE UNIQUE INDEX tasks_pkey ON holdfast.tasks USING btree (id);

constraint attempts_outcome_check on attempts: CHECK ((outcome = ANY (ARRAY['succeeded'::text, 'failed'::text, 'lost'::text, 'cancelled'::text])));

constraint attempts_pkey on attempts: PRIMARY KEY (task_id, attempt);

constraint attempts_task_id_fkey on attempts: FOREIGN KEY (task_id) REFERENCES holdfast.tasks(id) ON DELETE CASCADE;

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

table keys (key text not null, lock_id bigint not null, fence bigint not null default 0, busy boolean not null default false, head_id bigint, head_kind text, head_priority integer, head_run_at timestamp with time zone);

table kinds (kind text not null, max_attempts integer not null default 5, min_interval interval not null default '00:00:00'::interval, batch_max integer not null default 1, created_at timestamp with time zone not null default now());

table migrations (name text not null, applied_at timestamp with time zone not null default now());

table tasks (id bigint not null, kind text not null, key text not null, payload jsonb not null default '{}'::jsonb, state text not null default 'pending'::text, priority integer not null default 0, run_at timestamp with time zone not null default now(), attempt integer not null default 0, max_attempts integer not null, dedupe_key text, fence bigint, worker text, holder_pid integer, holder_started timestamp with time zone, cancel_requested boolean not null default false, last_error jsonb, created_at timestamp with time zone not null default now(), started_at timestamp with time zone, finished_at timestamp with time zone);

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
