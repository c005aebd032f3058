-- Settle: one round trip that reports a worker's completed tasks and claims its next ones, so a
-- busy worker pays one lock-session round trip (and one commit) per batch instead of two.

-- Completes done_ids (same checks as complete_many) and then claims (same as claim). Rows:
-- (rejected id, null) for each rejected completion, then (null, task) for each claimed task.
-- claim() turns synchronous_commit off for the transaction (cheap wake path); completions must
-- be durable, so it is turned back on when this call completed anything.
create function holdfast.settle(
  done_ids bigint[], done_fences bigint[], kinds text[], worker text, max_tasks int,
  max_keys int default null
) returns table (rejected bigint, task holdfast.tasks)
  language plpgsql
  security definer set search_path = pg_catalog, pg_temp
  as $$
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
end $$;

revoke all on function holdfast.settle(bigint[], bigint[], text[], text, int, int) from public;
do $$
begin
  if exists (select 1 from pg_roles where rolname = 'holdfast_worker') then
    grant execute on function holdfast.settle(bigint[], bigint[], text[], text, int, int)
      to holdfast_worker;
  end if;
end $$;
