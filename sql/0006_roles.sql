-- Roles. holdfast_producer enqueues, cancels and requeues; holdfast_worker runs tasks;
-- holdfast_observer reads. Grant them to your login roles. The entry points are SECURITY
-- DEFINER (owner's rights, fixed search_path), so no role needs rights on the tables, and
-- nothing but these grants can call them: EXECUTE is revoked from PUBLIC.
-- Roles are cluster-wide: creating them needs CREATEROLE, and tolerates a concurrent
-- migration of another database creating them first. Without CREATEROLE, have an admin
-- create the three roles (NOLOGIN) before migrating; the grants below skip missing roles.
do $$
declare
  r text;
begin
  foreach r in array array['holdfast_producer', 'holdfast_worker', 'holdfast_observer'] loop
    if not exists (select 1 from pg_roles where rolname = r) then
      begin
        execute format('create role %I nologin', r);
      exception
        when duplicate_object or unique_violation then null;
        when insufficient_privilege then
          raise notice 'holdfast: cannot create role % (needs CREATEROLE); create it, then grant', r;
      end;
    end if;
  end loop;
end $$;

revoke all on all functions in schema holdfast from public;
revoke all on all tables in schema holdfast from public;

do $$
declare
  f regprocedure;
  g record;
begin
  for f in
    select p.oid::regprocedure from pg_proc p
    where p.pronamespace = 'holdfast'::regnamespace
      and p.proname in ('enqueue', 'enqueue_task', 'cancel', 'retry', 'claim', 'complete',
                        'complete_many', 'fail', 'assert_fence', 'next_run_at', 'define_kind',
                        'try_lead', 'sweep')
  loop
    execute format('alter function %s security definer set search_path = pg_catalog, pg_temp', f);
  end loop;

  for g in
    select * from (values
      ('holdfast_producer', 'usage on schema holdfast'),
      ('holdfast_producer', 'execute on function holdfast.enqueue(text, text, jsonb, timestamptz, int, text, int, text), holdfast.enqueue_task(text, text, jsonb, timestamptz, int, text, int, text), holdfast.cancel(bigint), holdfast.retry(bigint, int), holdfast.lock_id(text)'),
      ('holdfast_worker', 'usage on schema holdfast'),
      ('holdfast_worker', 'execute on function holdfast.claim(text[], text, int, int), holdfast.complete(bigint, bigint), holdfast.complete_many(bigint[], bigint[]), holdfast.fail(bigint, bigint, text, interval, text), holdfast.assert_fence(text, bigint), holdfast.next_run_at(text[]), holdfast.define_kind(text, int, interval, int), holdfast.try_lead(), holdfast.sweep(), holdfast.lock_id(text)'),
      ('holdfast_worker', 'select on holdfast.orphans'),
      ('holdfast_observer', 'usage on schema holdfast'),
      ('holdfast_observer', 'select on holdfast.locks, holdfast.orphans, holdfast.dead_letters, holdfast.tasks, holdfast.attempts, holdfast.keys, holdfast.kinds')
    ) as v(role, what)
  loop
    if exists (select 1 from pg_roles where rolname = g.role) then
      execute format('grant %s to %I', g.what, g.role);
    end if;
  end loop;
end $$;
