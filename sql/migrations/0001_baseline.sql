-- Baseline: the tables and indexes of holdfast 0.1.0. A database migrated by 0.1.0's files
-- (0001_schema.sql .. 0008_set_based.sql) has exactly these and is recorded as having applied
-- this file (src/migrate.ts). Functions and views live in sql/api/, not here.
create schema if not exists holdfast;

create table holdfast.kinds (
  kind text primary key check (kind ~ '^[A-Za-z0-9_.:-]{1,100}$'),
  max_attempts int not null default 5 check (max_attempts >= 1),
  min_interval interval not null default '0' check (min_interval >= interval '0'),
  batch_max int not null default 1 check (batch_max between 1 and 1000),
  created_at timestamptz not null default now()
);

-- One row per lock key. head_* is the key's next task (see sql/api/20_keys.sql); busy means a
-- task of the key is running. Both are kept under the key row's lock, so claim scans ready
-- keys only and its cost does not grow with the number of pending tasks.
create table holdfast.keys (
  key text primary key check (key <> '' and octet_length(key) <= 1000),
  lock_id bigint not null,
  fence bigint not null default 0,
  busy boolean not null default false,
  head_id bigint,
  head_kind text,
  head_priority int,
  head_run_at timestamptz
);
create index keys_lock_id on holdfast.keys (lock_id);
-- Ready keys by kind first: claim and next_run_at read only the kinds they are asked for.
create index keys_ready_kind on holdfast.keys (head_kind, head_priority, head_run_at, head_id)
  where head_id is not null and not busy;
create index keys_next_run_at on holdfast.keys (head_kind, head_run_at)
  where head_id is not null and not busy;

create table holdfast.tasks (
  id bigint generated always as identity primary key,
  kind text not null references holdfast.kinds (kind),
  key text not null references holdfast.keys (key),
  payload jsonb not null default '{}',
  state text not null default 'pending'
    check (state in ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
  priority int not null default 0,
  run_at timestamptz not null default now(),
  attempt int not null default 0,
  max_attempts int not null check (max_attempts >= 1),
  dedupe_key text,
  fence bigint,
  worker text,
  holder_pid int,
  holder_started timestamptz,
  cancel_requested boolean not null default false,
  last_error jsonb,
  created_at timestamptz not null default now(),
  started_at timestamptz,
  finished_at timestamptz
);
create index tasks_key_pending on holdfast.tasks (key, priority, run_at, id) where state = 'pending';
create index tasks_running on holdfast.tasks (key) where state = 'running';
-- inspect counts open tasks per kind: only those are indexed, so a completion adds no entry.
create index tasks_kind_open on holdfast.tasks (kind, state)
  where state in ('pending', 'running', 'failed');
create unique index tasks_dedupe_pending on holdfast.tasks (dedupe_key)
  where state = 'pending' and dedupe_key is not null;

-- One row per ended attempt: who held the task, with which fence, and how it ended. A running
-- attempt is its task row (state 'running', attempt, fence, worker, started_at).
create table holdfast.attempts (
  task_id bigint not null references holdfast.tasks (id) on delete cascade,
  attempt int not null,
  fence bigint not null,
  worker text,
  pid int,
  started_at timestamptz not null default now(),
  finished_at timestamptz,
  outcome text check (outcome in ('succeeded', 'failed', 'lost', 'cancelled')),
  error jsonb,
  primary key (task_id, attempt)
);

-- When a kind with a minimum interval last succeeded on a key (read when the key's head is
-- computed, so claim enforces the interval by the head's ready time alone).
create table holdfast.key_kinds (
  key text not null references holdfast.keys (key),
  kind text not null references holdfast.kinds (kind),
  last_succeeded_at timestamptz not null,
  primary key (key, kind)
);
