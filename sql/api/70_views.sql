-- Operators' views (role holdfast_observer): who holds which key, and the dead letters.

-- Holder of each held key lock, and sessions waiting for one (granted = false).
create view holdfast.locks as
select
  k.key,
  k.lock_id,
  l.granted,
  l.pid,
  a.application_name,
  a.client_addr,
  a.backend_start,
  t.id as task_id,
  t.kind,
  t.attempt,
  t.fence,
  t.worker,
  t.started_at,
  now() - t.started_at as held_for
from pg_locks l
join holdfast.keys k
  on l.locktype = 'advisory' and l.objsubid = 1
  and k.lock_id = ((l.classid::bigint << 32) | l.objid::bigint)
left join pg_stat_activity a on a.pid = l.pid
left join lateral (
  select * from holdfast.tasks t
  where t.key = k.key and t.state = 'running' and t.holder_pid = l.pid
  order by t.id limit 1) t on l.granted
where l.database = (select oid from pg_database where datname = current_database());
select holdfast._grant('select', 'holdfast.locks', 'holdfast_observer');

-- Dead letters: tasks that used all their attempts, with their attempts history.
create view holdfast.dead_letters as
select t.id, t.kind, t.key, t.payload, t.attempt, t.max_attempts, t.last_error, t.created_at,
  t.finished_at,
  (select jsonb_agg(jsonb_build_object('attempt', a.attempt, 'worker', a.worker,
     'started_at', a.started_at, 'finished_at', a.finished_at, 'outcome', a.outcome,
     'error', a.error) order by a.attempt)
   from holdfast.attempts a where a.task_id = t.id) as attempts
from holdfast.tasks t
where t.state = 'failed';
select holdfast._grant('select', 'holdfast.dead_letters', 'holdfast_observer');
