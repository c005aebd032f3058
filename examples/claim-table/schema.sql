-- The service's own table: it stays. Each message is processed once, in order per work unit.
create table messages (
  id bigint generated always as identity primary key,
  work_unit text not null,
  body text not null,
  processed_at timestamptz
);
create table derivations (
  message_id bigint primary key references messages (id),
  summary text not null
);
