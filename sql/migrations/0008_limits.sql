-- Limits a provider imposes (functions: sql/api/37_limits.sql): at most `units` per sliding
-- window of `per`, shared by every kind that names the limit. closed_until: a provider's 429
-- closed it for everyone until then. used: the units of the runs in limit_runs, kept by every
-- write to them under this row's lock, so admission reads one row whatever the window holds.
create table holdfast.limits (
  name text primary key check (name ~ '^[A-Za-z0-9_.:-]{1,100}$'),
  units bigint not null check (units > 0),
  per interval not null check (per > interval '0'),
  used bigint not null default 0,
  closed_until timestamptz,
  created_at timestamptz not null default now()
);

-- The limits a kind draws on, and the units each run of it reserves.
create table holdfast.kind_limits (
  kind text not null references holdfast.kinds (kind),
  limit_name text not null references holdfast.limits (name),
  units bigint not null check (units > 0),
  primary key (kind, limit_name)
);
create index kind_limits_limit on holdfast.kind_limits (limit_name);

-- One row per run admitted on a limit (a run is a key's claim: key + fence), while it is in
-- the limit's window: admitted at `at`, it counts `reserved` until it is charged, then the
-- sum of its charges. Deleted once `at` leaves the window.
create table holdfast.limit_runs (
  limit_name text not null references holdfast.limits (name),
  key text not null,
  fence bigint not null,
  at timestamptz not null,
  reserved bigint not null check (reserved >= 0),
  charged bigint check (charged >= 0),
  primary key (limit_name, key, fence)
);
-- Oldest first per limit: expiry and the time room frees read the head of one range.
create index limit_runs_at on holdfast.limit_runs (limit_name, at);
