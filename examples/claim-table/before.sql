-- Before: the hand-rolled claim table and what keeps it alive (delete all of this afterwards).
create table active_claims (
  work_unit text primary key,
  worker text not null,
  claimed_at timestamptz not null default now()
);
-- A worker claims a unit (no row returned: someone else holds it) ...
insert into active_claims (work_unit, worker) values ($1, $2)
on conflict (work_unit) do nothing returning work_unit;
-- ... refreshes its claim between messages ...
update active_claims set claimed_at = now() where work_unit = $1 and worker = $2;
-- ... and a cleanup loop frees claims that look stale, running or not.
delete from active_claims where claimed_at < now() - interval '5 minutes';
