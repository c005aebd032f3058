-- Cluster-wide concurrency caps per kind (kinds.max_running; null = no cap).
-- A capped kind has max_running slots, each a session advisory lock in the two-int key space
-- (_slot_class(kind), slot number). A claim of the kind takes a free slot on the claiming
-- session and holds it for the run (a batch is one run: one slot); it is released with the
-- key when the run ends (50_finish), and by Postgres when the holder's session ends: no
-- lease, no timeout. A held slot is exclusive, so at most max_running runs hold one at once.
-- Claim (40_claim), finish (50_finish) and sweep (60_sweep) call these in steps marked "Caps".

-- The first int of a kind's slot locks. Never holdfast's migration and leadership class
-- (1752132708). A collision (another kind, or another user of the two-int space) only makes
-- a slot look taken: fewer runs at once, never more.
create function holdfast._slot_class(kind text) returns int
  language sql immutable strict parallel safe as $$
  select case when h = 1752132708 then h + 1 else h end
  from (select (hashtextextended(kind, 4714072861207531113) >> 32)::int as h) x
$$;

-- Kinds a claim may take from, with the room left under each one's cap (null: uncapped).
-- A full kind is left out, so its ready keys cost a claim of other kinds nothing. The count
-- includes runs whose holder just died: their room comes back when the sweep requeues them
-- (and notifies), within the sweep interval.
create function holdfast._claimable(kinds text[]) returns table (kind text, room int)
  language sql stable as $$
  select x.kind, x.max_running - x.used from (
    select kd.kind, k.max_running, case when k.max_running is null then 0 else (
        select count(*) from holdfast.tasks t
        where t.kind = kd.kind and t.state = 'running' and t.slot is not null)::int end as used
    from (select distinct unnest(kinds)) as kd (kind)
    left join holdfast.kinds k on k.kind = kd.kind) x
  where x.max_running is null or x.max_running > x.used
$$;

-- Try-locks up to want free slots of a kind on this session. A session lock is re-entrant, so
-- the slots this session's runs already hold are skipped by their rows (not by pg_locks).
create function holdfast._take_slots(kind text, cap int, want int) returns int[]
  language plpgsql as $$
#variable_conflict use_column
declare
  v_class int := holdfast._slot_class(kind);
  v_mine int[];
  v_got int[] := '{}';
begin
  select coalesce(array_agg(t.slot), '{}') into v_mine from holdfast.tasks t
  where t.kind = _take_slots.kind and t.state = 'running' and t.slot is not null
    and t.holder_pid = pg_backend_pid();
  for s in 1..cap loop
    exit when cardinality(v_got) >= want;
    continue when s = any (v_mine);
    if pg_try_advisory_lock(v_class, s) then
      v_got := v_got || s;
    end if;
  end loop;
  return v_got;
end $$;

-- Slots for the keys a claim locked, in their order: null for an uncapped kind, a slot
-- number, or 0 when the kind had no free slot left. Null when no kind is capped.
create function holdfast._claim_slots(keys text[], kinds text[]) returns int[]
  language plpgsql as $$
declare
  r record;
  v_got int[];
  v_slots int[];
begin
  for r in
    select g.kind, kd.max_running, array_agg(g.ord order by g.ord) as ords
    from unnest(kinds) with ordinality as g (kind, ord)
    join holdfast.kinds kd on kd.kind = g.kind
    where kd.max_running is not null
    group by g.kind, kd.max_running
  loop
    v_slots := coalesce(v_slots, array_fill(null::int, array[cardinality(keys)]));
    v_got := holdfast._take_slots(r.kind, r.max_running, cardinality(r.ords));
    for i in 1..cardinality(r.ords) loop
      v_slots[r.ords[i]] := coalesce(v_got[i], 0);
    end loop;
  end loop;
  return v_slots;
end $$;
