-- Pruning: finished tasks older than their kind's retention (kinds.retain_*) leave the
-- database with their attempts, and so do key rows no task needs any more. Run in batches by
-- the sweep leader (src/worker/pruner.ts), or by hand: holdfast.prune(). Role holdfast_worker.
--
-- Locks. A batch never waits: every row it deletes it first locks with SKIP LOCKED, and a row
-- someone else holds is left for a later batch. Claim and finish never touch a finished task;
-- a key row is deleted only once no task references it (enqueue locks the key row before it
-- inserts, and recreates a row deleted under it: api/30_enqueue.sql). What must outlive the
-- tasks stays: a key's key_kinds row until its minimum interval has passed (and its key row
-- with it), and the highest fence of every deleted key row (fence_floor, see _next_fence).
-- Dedupe, order and caps read pending and running tasks only; schedule ticks keep their
-- task ids, which may then name a pruned task.

-- One batch: up to max_rows finished tasks past retention (with their attempts), up to
-- max_rows ended minimum intervals, then the key rows left without a task. One transaction:
-- a batch that fails or whose session dies deletes nothing. Rows deleted per table.
create function holdfast.prune_rows(max_rows int default 1000)
returns table (tasks int, attempts int, keys int, key_kinds int)
  language plpgsql security definer
  set search_path = pg_catalog, pg_temp set plan_cache_mode = force_generic_plan as $$
declare
  r record;
  v_ids bigint[] := '{}';
  v_keys text[] := '{}';
  v_more_ids bigint[];
  v_more_keys text[];
  v_kk_keys text[] := '{}';
  v_kk_kinds text[] := '{}';
  v_more_kinds text[];
  v_empty text[];
  v_locked text[];
  v_floor bigint;
  v_emptied text[];
begin
  tasks := 0; attempts := 0; keys := 0; key_kinds := 0;
  if max_rows is null or max_rows < 1 then
    return next;
    return;
  end if;
  -- Oldest first per kind and end state, through tasks_finished. Each range is read with its
  -- bounds written out (EXECUTE): with parameters, the planner would rather scan and sort the
  -- whole table than trust the index to end the range early. A task locked by a retry in
  -- progress is skipped; FOR UPDATE re-checks state and finished_at on its latest row.
  for r in
    select kd.kind, s.state, now() - s.keep as cutoff
    from holdfast.kinds kd
    cross join lateral (values ('succeeded', kd.retain_succeeded),
                               ('cancelled', kd.retain_cancelled),
                               ('failed', kd.retain_failed)) s (state, keep)
    where s.keep is not null
    order by kd.kind, s.state
  loop
    exit when cardinality(v_ids) >= max_rows;
    execute format(
      'select coalesce(array_agg(t.id), ''{}''), coalesce(array_agg(t.key), ''{}'')
       from (select t.id, t.key from holdfast.tasks t
             where t.kind = %L and t.state = %L and t.finished_at < %L::timestamptz
             order by t.finished_at limit %s for update of t skip locked) t',
      r.kind, r.state, r.cutoff, max_rows - cardinality(v_ids))
    into v_more_ids, v_more_keys;
    v_ids := v_ids || v_more_ids;
    v_keys := v_keys || v_more_keys;
  end loop;

  -- Minimum intervals that have passed (key_kinds_ends, bounds written out as above), locked:
  -- nothing reads them any more. Their keys may be left without a task (the tasks went in an
  -- earlier batch, while the interval ran): they are tried below with this batch's.
  for r in
    select kd.kind, now() - kd.min_interval as cutoff from holdfast.kinds kd order by kd.kind
  loop
    exit when cardinality(v_kk_keys) >= max_rows;
    execute format(
      'select coalesce(array_agg(kk.key), ''{}''), coalesce(array_agg(kk.kind), ''{}'')
       from (select kk.key, kk.kind from holdfast.key_kinds kk
             where kk.kind = %L and kk.last_succeeded_at < %L::timestamptz
             order by kk.last_succeeded_at limit %s for update of kk skip locked) kk',
      r.kind, r.cutoff, max_rows - cardinality(v_kk_keys))
    into v_more_keys, v_more_kinds;
    v_kk_keys := v_kk_keys || v_more_keys;
    v_kk_kinds := v_kk_kinds || v_more_kinds;
  end loop;

  -- Key rows completions left without a task (a success deleted at completion), oldest first;
  -- one whose mark is stale (a task was enqueued since) is kept below and its mark cleared.
  v_emptied := array(select k.key from holdfast.keys k where k.emptied_at is not null
    order by k.emptied_at limit max_rows);
  v_keys := v_keys || v_emptied;

  -- Keys this batch leaves with nothing (no task, no key_kinds row but those it deletes): their
  -- rows go too, so each is locked without waiting first. A key someone holds (an enqueue, a
  -- retry of its task, an assert_fence) keeps its rows for a later batch: deleting only its
  -- tasks would leave a key row that no later batch could find.
  v_empty := array(
    select k.key from holdfast.keys k
    where k.key = any (v_keys || v_kk_keys) and k.head_id is null and not k.busy
      and not exists (select 1 from holdfast.tasks t where t.key = k.key and t.id <> all (v_ids))
      and not exists (
        select 1 from holdfast.key_kinds kk where kk.key = k.key
          and (kk.key, kk.kind) not in (select * from unnest(v_kk_keys, v_kk_kinds))));
  v_locked := array(
    select k.key from holdfast.keys k where k.key = any (v_empty) for update of k skip locked);
  if cardinality(v_locked) < cardinality(v_empty) then
    v_ids := array(select t.id from holdfast.tasks t
      where t.id = any (v_ids) and (t.key = any (v_locked) or t.key <> all (v_empty)));
    select coalesce(array_agg(x.key), '{}'), coalesce(array_agg(x.kind), '{}')
    into v_kk_keys, v_kk_kinds
    from unnest(v_kk_keys, v_kk_kinds) x (key, kind)
    where x.key = any (v_locked) or x.key <> all (v_empty);
  end if;

  if cardinality(v_ids) > 0 then
    delete from holdfast.attempts a where a.task_id = any (v_ids);
    get diagnostics attempts = row_count;
    delete from holdfast.tasks t where t.id = any (v_ids);
    get diagnostics tasks = row_count;
  end if;
  if cardinality(v_kk_keys) > 0 then
    delete from holdfast.key_kinds kk
    using unnest(v_kk_keys, v_kk_kinds) x (key, kind)
    where kk.key = x.key and kk.kind = x.kind;
    get diagnostics key_kinds = row_count;
  end if;

  if cardinality(v_emptied) > cardinality(v_locked) then
    update holdfast.keys k set emptied_at = null
    from (select s.key from holdfast.keys s
          where s.key = any (v_emptied) and s.key <> all (v_empty) and s.emptied_at is not null
          for update of s skip locked) s
    where k.key = s.key;
  end if;
  if cardinality(v_locked) = 0 then
    return next;
    return;
  end if;
  -- This statement's snapshot is newer than every lock above: it sees every task committed
  -- on these keys (an enqueue that committed before the lock), and no other can be added
  -- while the rows are locked.
  with d as (
    delete from holdfast.keys k
    where k.key = any (v_locked)
      and not exists (select 1 from holdfast.tasks t where t.key = k.key)
      and not exists (select 1 from holdfast.key_kinds kk where kk.key = k.key)
    returning k.fence
  )
  select count(*), max(d.fence) into keys, v_floor from d;
  -- Last, so that two batches at once wait for each other only here, briefly.
  if v_floor is not null then
    update holdfast.fence_floor f set fence = v_floor where f.fence < v_floor;
  end if;
  return next;
end $$;
select holdfast._grant('execute', 'function holdfast.prune_rows(int)', 'holdfast_worker');

-- One batch of pruning (see prune_rows) for SQL-only deployments and operators: returns the
-- number of rows it deleted (tasks, attempts, key rows and minimum intervals); 0 when there
-- is nothing left to prune. Call it until it returns 0 to catch up.
create function holdfast.prune(max_rows int default 1000) returns int
  language sql security definer set search_path = pg_catalog, pg_temp as $$
  select p.tasks + p.attempts + p.keys + p.key_kinds from holdfast.prune_rows(max_rows) p
$$;
select holdfast._grant('execute', 'function holdfast.prune(int)', 'holdfast_worker');

-- When the next prune has something to do: the earliest time a finished task passes its
-- retention or a minimum interval ends (one index probe per kind and state); 'infinity' when
-- nothing will. The sweep leader's quiet deadline covers it (quiet_until). Volatile: in the
-- pruner's statement it runs after prune_rows() and must see what that deleted.
create function holdfast.prune_due() returns timestamptz
  language sql volatile security definer set search_path = pg_catalog, pg_temp as $$
  select coalesce(least(
    (select min(k.emptied_at) from holdfast.keys k where k.emptied_at is not null),
    (select min(x.at) from holdfast.kinds kd
     cross join lateral (values ('succeeded', kd.retain_succeeded),
                                ('cancelled', kd.retain_cancelled),
                                ('failed', kd.retain_failed)) r (state, keep)
     cross join lateral (
       -- (The state list implies tasks_finished's predicate: r.state alone cannot.)
       select t.finished_at + r.keep as at from holdfast.tasks t
       where t.kind = kd.kind and t.state = r.state and r.keep is not null
         and t.state in ('succeeded', 'cancelled', 'failed')
       order by t.finished_at limit 1) x),
    (select min(x.at) from holdfast.kinds kd
     cross join lateral (
       select kk.last_succeeded_at + kd.min_interval as at from holdfast.key_kinds kk
       where kk.kind = kd.kind order by kk.last_succeeded_at limit 1) x)), 'infinity')
$$;
select holdfast._grant('execute', 'function holdfast.prune_due()', 'holdfast_worker');

-- How the leader paces its batches (src/worker/pruner.ts): the shortest retention of any kind
-- (ms; null when every kind keeps everything), and whether a task is running (it will end and
-- expire). Read with each batch.
create function holdfast.prune_pace(out keep_ms float8, out running boolean)
  language sql stable security definer set search_path = pg_catalog, pg_temp as $$
  select (select extract(epoch from min(least(kd.retain_succeeded, kd.retain_cancelled,
            kd.retain_failed))) * 1000 from holdfast.kinds kd)::float8,
         exists (select 1 from holdfast.tasks t where t.state = 'running')
$$;
select holdfast._grant('execute', 'function holdfast.prune_pace()', 'holdfast_worker');
