-- holdfast schema: kinds, keys (one row per lock key: fence + ready head), tasks, attempts.
create schema if not exists holdfast;

-- Lock identity is computed here and only here, so every language agrees.
-- The seed keeps holdfast's ids away from naive hashtext() users of the same bigint lock space.
create function holdfast.lock_id(key text) returns bigint
  language sql immutable strict parallel safe
  as $$ select hashtextextended(key, 4714072861207531113) $$;

-- Fences are monotonic across crashes and failovers: a claim whose commit is lost still
-- handed out a fence below any fence issued later, because fences track the wall clock
-- (1024 per millisecond) and never go below the key's last committed fence + 1.
create function holdfast._next_fence(current bigint) returns bigint
  language sql volatile
  as $$ select greatest(current + 1, (extract(epoch from clock_timestamp()) * 1000)::bigint * 1024) $$;

create table holdfast.kinds (
  kind text primary key check (kind ~ '^[A-Za-z0-9_.:-]{1,100}$'),
  max_attempts int not null default 5 check (max_attempts >= 1),
  min_interval interval not null default '0' check (min_interval >= interval '0'),
  batch_max int not null default 1 check (batch_max between 1 and 1000),
  created_at timestamptz not null default now()
);

-- head_* is the key's next task in (priority, run_at, id) order; busy means a task of the
-- key is running. Both are kept under the key row's lock, so claim scans ready keys only
-- and its cost does not grow with the number of pending tasks.
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
create index keys_ready on holdfast.keys (head_priority, head_run_at, head_id)
  where head_id is not null and not busy;
create index keys_lock_id on holdfast.keys (lock_id);

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
create index tasks_kind_state on holdfast.tasks (kind, state);
create unique index tasks_dedupe_pending on holdfast.tasks (dedupe_key)
  where state = 'pending' and dedupe_key is not null;

-- One row per attempt: who held the task, with which fence, and how it ended.
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
