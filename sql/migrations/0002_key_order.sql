-- A task's place in its key's order, apart from its earliest start (run_at). A key's tasks
-- start in (priority, place_at, id) order; place_at is the run_at the task was enqueued with
-- and stays put through lost attempts and, for strict kinds, retries, which move run_at only.
alter table holdfast.tasks add column place_at timestamptz;
-- Existing tasks keep the order they have: (priority, run_at, id).
update holdfast.tasks set place_at = run_at;
alter table holdfast.tasks alter column place_at set not null, alter column place_at set default now();

drop index holdfast.tasks_key_pending;
create index tasks_key_pending on holdfast.tasks (key, priority, place_at, id) where state = 'pending';

-- strict_order (default): a failed task waiting out its retry backoff keeps its place, so the
-- key's later tasks wait for it. false: later tasks pass it (it goes back in line at its retry
-- time), for kinds whose tasks on one key are independent.
alter table holdfast.kinds add column strict_order boolean not null default true;
