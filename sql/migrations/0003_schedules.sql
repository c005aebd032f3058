-- Recurring schedules (holdfast.schedules, schedule_ticks) and concurrency caps per kind
-- (kinds.max_running, tasks.slot). Their functions: sql/api/35_caps.sql, sql/api/80_schedules.sql.

-- covered_until: every tick at or before it has been enqueued or skipped (a tick older than
-- the latest `backfill` due ticks is skipped). It moves forward only, under the row lock.
-- revision grows when cron or timezone change, so a leader holding an old definition is told.
create table holdfast.schedules (
  name text primary key check (name <> '' and octet_length(name) <= 200),
  cron text not null check (cron <> '' and octet_length(cron) <= 200),
  timezone text check (timezone <> ''),
  kind text not null references holdfast.kinds (kind),
  key text not null check (key <> '' and octet_length(key) <= 1000),
  payload jsonb not null default '{}',
  priority int not null default 0,
  backfill int not null default 1 check (backfill between 1 and 1000),
  revision int not null default 1,
  covered_until timestamptz not null default now(),
  next_at timestamptz,
  last_tick_at timestamptz,
  last_task_id bigint,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

-- One row per enqueued tick (the primary key makes a second enqueue of a tick impossible);
-- the last 100 per schedule are kept.
create table holdfast.schedule_ticks (
  name text not null references holdfast.schedules (name) on delete cascade,
  tick_at timestamptz not null,
  task_id bigint not null,
  enqueued_at timestamptz not null default now(),
  primary key (name, tick_at)
);

-- Caps: a capped kind has max_running slots (session advisory locks, see api/35_caps.sql).
alter table holdfast.kinds add column max_running int check (max_running >= 1);
-- The slot a running task's run holds (null: an uncapped kind).
alter table holdfast.tasks add column slot int;
-- Running tasks holding a slot, per kind: how full a kind is, and which slots this session holds.
create index tasks_slots on holdfast.tasks (kind, slot) where state = 'running' and slot is not null;
