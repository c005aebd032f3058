-- Checkpoints: a running task's holder stores a JSON value on the task, fenced; the task's
-- next attempt receives it with its claim (claim returns the task row). Role holdfast_worker.

-- Whether the session that claimed a task is alive and still the same backend (pid and
-- backend start; a reused pid does not match). Where backend_start is hidden from this
-- function's owner, the holder must hold the key's lock now (pg_locks).
create function holdfast._holder_alive(pid int, started timestamptz, key text) returns boolean
  language plpgsql stable as $$
declare
  v_found boolean;
  v_start timestamptz;
begin
  select true, a.backend_start into v_found, v_start from pg_stat_get_activity(pid) a;
  if v_found is null then
    return false;
  end if;
  if v_start is not null then
    return v_start = started;
  end if;
  -- A bigint advisory lock is (classid, objid) = (high, low) 32 bits, objsubid 1.
  return exists (select 1 from pg_locks l
    where l.locktype = 'advisory' and l.pid = _holder_alive.pid and l.granted and l.objsubid = 1
      and ((l.classid::bigint << 32) | l.objid::bigint) = holdfast.lock_id(_holder_alive.key));
end $$;

-- Stores state as task id's checkpoint, written by the run holding fence. Returns false and
-- writes nothing when the task is not running under that fence (a newer claim exists, or the
-- run ended: succeeded, failed, requeued by the sweep) or when its holder session is gone.
-- Any connection may call it (the app's pool, or the handler's own transaction, so that its
-- writes and its checkpoint commit together): the fence and the holder decide, not the caller.
-- It updates the task row, so it is serialized with the sweep and a takeover's claim: either
-- it commits while the run still holds the task, or it is refused.
-- state: any JSON value up to 1 MiB (HF002); an object's "progress" must be a number from 0
-- to 1 and its "note" a string (shown by inspect, the dashboard and metrics). HF003: no task.
create function holdfast.checkpoint(id bigint, fence bigint, state jsonb) returns boolean
  language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  v_id bigint := $1;
  v_fence bigint := $2;
  v_state jsonb := $3;
  v_progress jsonb;
begin
  if v_state is null then
    perform holdfast._raise('HF002', 'holdfast: a checkpoint must be a JSON value, not null');
  end if;
  if octet_length(v_state::text) > 1048576 then
    perform holdfast._raise('HF002', 'holdfast: checkpoint is larger than 1 MiB');
  end if;
  if jsonb_typeof(v_state) = 'object' then
    v_progress := v_state -> 'progress';
    if v_progress is not null and jsonb_typeof(v_progress) <> 'null' and (
        jsonb_typeof(v_progress) <> 'number' or (v_progress #>> '{}')::numeric not between 0 and 1)
    then
      perform holdfast._raise('HF002', 'holdfast: checkpoint progress must be a number from 0 to 1');
    end if;
    if jsonb_typeof(v_state -> 'note') not in ('string', 'null') then
      perform holdfast._raise('HF002', 'holdfast: checkpoint note must be a string');
    end if;
  end if;
  update holdfast.tasks t
  set checkpoint = v_state, checkpoint_at = clock_timestamp(), checkpoint_fence = t.fence
  where t.id = v_id and t.fence = v_fence and t.state = 'running'
    and holdfast._holder_alive(t.holder_pid, t.holder_started, t.key);
  if found then
    return true;
  end if;
  if not exists (select 1 from holdfast.tasks t where t.id = v_id) then
    perform holdfast._raise('HF003', format('holdfast: no task with id %s', v_id));
  end if;
  return false;
end $$;
select holdfast._grant('execute', 'function holdfast.checkpoint(bigint, bigint, jsonb)',
  'holdfast_worker');

-- Gives back a run stopped by its worker's shutdown (this session holds it) when every task
-- of it has checkpointed under this fence: pending again in its place, the attempt not
-- counted, its key unlocked and idle workers told, so another worker resumes it at once.
-- Returns false and changes nothing otherwise, and when a cancel was requested meanwhile (the
-- worker then reports the run with fail(), which records the cancel).
create function holdfast.hand_over(ids bigint[], fences bigint[]) returns boolean
  language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
  -- Under the key rows' locks (as _finish_many takes them), so a cancel cannot commit between
  -- this check and the release.
  perform 1 from holdfast.keys k
  where k.key in (select t.key from holdfast.tasks t where t.id = any (ids))
  order by k.key for no key update;
  if coalesce(cardinality(ids), 0) = 0 or exists (
    select 1 from unnest(ids, fences) d (id, fence)
    left join holdfast.tasks t on t.id = d.id
    where t.id is null or t.state <> 'running' or t.fence <> d.fence or t.cancel_requested
      or t.checkpoint_fence is distinct from d.fence) then
    return false;
  end if;
  return not exists (select 1 from holdfast._finish_many(ids, fences, 'released', null, null));
end $$;
select holdfast._grant('execute', 'function holdfast.hand_over(bigint[], bigint[])',
  'holdfast_worker');
