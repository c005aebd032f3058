-- Claim: take ready tasks, holding each key's session advisory lock in the caller's session
-- until complete()/fail() (or until the session ends).

-- The caller's session identity, recorded as the holder of what it claims.
-- Cached in a session setting: reading it from pg_stat_get_activity costs ~30 us per call. A
-- forged value only makes this session's runs look orphaned to the sweep, which then cannot
-- take their key lock, so nothing is taken from a live session.
create function holdfast._session_started() returns timestamptz
  language plpgsql stable as $$
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
end $$;

-- Claims up to max_tasks tasks from at most max_keys keys (null: no key limit). Each claimed
-- key yields its head task, and for a batch kind (batch_max > 1) the tasks of that kind that
-- directly follow it in the key's order, up to batch_max: one run, one fence. Keys are taken
-- in (priority, ready time, id) order of their heads; a key whose run just ended is ready
-- again only from that moment, so it goes behind keys that were waiting (fairness).
create function holdfast.claim(kinds text[], worker text, max_tasks int default 1,
                               max_keys int default null)
returns setof holdfast.tasks
  language plpgsql as $$
#variable_conflict use_column
declare
  c record;
  p record;
  t holdfast.tasks;
  v_fence bigint;
  v_pid int := pg_backend_pid();
  v_started timestamptz := holdfast._session_started();
  v_head_kind text;
  v_batch int;
  v_taken int;
  n int := 0;
  n_keys int := 0;
begin
  if max_tasks is null or max_tasks < 1 or (max_keys is not null and max_keys < 1) then
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
    exit when n >= max_tasks or n_keys >= coalesce(max_keys, n_keys + 1);
    -- One key at a time, never in a WHERE with LIMIT: no lock is taken that is not used.
    continue when not pg_try_advisory_lock(c.lock_id);

    -- Re-check under the key row lock: advisory locks ignore MVCC, so the scan may be stale.
    -- A busy key is skipped, which also covers our own session re-taking a lock it holds.
    -- SKIP LOCKED: a handler's assert_fence may hold the row; never block the lock session.
    select k.head_kind, holdfast._next_fence(k.fence), least(kd.batch_max, max_tasks - n)
    into v_head_kind, v_fence, v_batch
    from holdfast.keys k join holdfast.kinds kd on kd.kind = k.head_kind
    where k.key = c.key and k.head_id is not null and not k.busy
      and k.head_run_at <= now() and k.head_kind = any (kinds)
    for update of k skip locked;
    if not found then
      perform pg_advisory_unlock(c.lock_id);
      continue;
    end if;

    -- The head and the tasks of its kind right behind it, in the key's order (FIFO per key).
    -- Bounded by the batch size: no scan over the key's other pending tasks.
    v_taken := 0;
    for p in
      select q.id, q.kind, q.run_at from holdfast.tasks q
      where q.key = c.key and q.state = 'pending'
      order by q.priority, q.run_at, q.id
      limit v_batch
      for update
    loop
      exit when p.kind <> v_head_kind or (v_taken > 0 and p.run_at > now());
      update holdfast.tasks u set
        state = 'running', attempt = u.attempt + 1, fence = v_fence, worker = claim.worker,
        holder_pid = v_pid, holder_started = v_started, started_at = now(),
        cancel_requested = false
      where u.id = p.id
      returning u.* into t;
      insert into holdfast.attempts (task_id, attempt, fence, worker, pid)
      values (t.id, t.attempt, v_fence, claim.worker, v_pid);
      v_taken := v_taken + 1;
      n := n + 1;
      return next t;
    end loop;

    if v_taken = 0 then
      perform pg_advisory_unlock(c.lock_id);
      perform holdfast._refresh_key(c.key);
    else
      n_keys := n_keys + 1;
      -- The new fence is written with the head, still under the row lock taken above.
      perform holdfast._refresh_key(c.key, false, v_fence);
    end if;
  end loop;
end $$;

create index keys_next_run_at on holdfast.keys (head_run_at) where head_id is not null and not busy;

-- The earliest time a not-yet-ready task of these kinds becomes ready (for a worker's timer).
create function holdfast.next_run_at(kinds text[]) returns timestamptz
  language sql stable as $$
  select min(k.head_run_at) from holdfast.keys k
  where k.head_id is not null and not k.busy and k.head_kind = any (kinds)
$$;
