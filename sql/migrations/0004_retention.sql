-- Retention: finished tasks leave the database once older than their kind's retention for
-- their end state (null: kept forever). Pruning (api/55_prune.sql) deletes them, their attempts,
-- and key rows no task references any more. Existing kinds take the defaults: succeeded work
-- is rarely read after a day, a cancel is looked into within a week, a dead letter needs a
-- person and may wait for one for weeks.
alter table holdfast.kinds
  add column retain_succeeded interval default '1 day' check (retain_succeeded >= interval '0'),
  add column retain_cancelled interval default '7 days' check (retain_cancelled >= interval '0'),
  add column retain_failed interval default '30 days' check (retain_failed >= interval '0');

-- Finished tasks per kind and end state, oldest first: a prune batch and the next prune time
-- each read the head of one range per (kind, state), whatever the number of tasks kept.
create index tasks_finished on holdfast.tasks (kind, state, finished_at)
  where state in ('succeeded', 'cancelled', 'failed');

-- Attempts by when they ended: the dashboard's last hour reads its window, not the table
-- (attempts are inserted once and never updated, so this costs one entry per attempt).
create index attempts_finished on holdfast.attempts (finished_at);

-- Every task of a key: whether a key row is still referenced (and the foreign key's check when
-- one is deleted) is one probe, not a scan of tasks.
create index tasks_key on holdfast.tasks (key);

-- Minimum intervals by when they end: a key whose tasks were pruned keeps its key_kinds row
-- (and key row) until its interval has passed; the prune finds the ended ones here.
create index key_kinds_ends on holdfast.key_kinds (kind, last_succeeded_at);

-- Fences stay monotonic across a pruned key row: the highest fence of any deleted key row. A
-- key row created again starts above it (see _next_fence), whatever the clock says.
create table holdfast.fence_floor (
  one boolean primary key default true check (one),
  fence bigint not null default 0
);
insert into holdfast.fence_floor default values;
