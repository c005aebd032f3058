-- Kinds: their settings (attempts, minimum interval per key, batch size, order of retries, cap,
-- retention).

-- Registers a kind or updates the settings that are given (null keeps the current value).
-- strict_order (default true): a failed task waiting out its retry backoff keeps its place in
-- its key's order, so the key's later tasks wait for it; false lets them pass it.
-- max_running: the kind's cap on runs at once cluster-wide (api/35_caps.sql); 0 removes it.
-- retain_*: how long a task that ended succeeded, cancelled or failed (a dead letter) is kept
-- after it ended (api/55_prune.sql; defaults 1 day, 7 days, 30 days); keep_forever lists end
-- states whose tasks are never pruned (an interval given for the same state is refused).
create function holdfast.define_kind(
  kind text,
  max_attempts int default null,
  min_interval interval default null,
  batch_max int default null,
  strict_order boolean default null,
  max_running int default null,
  keep_checkpoint boolean default null,
  retain_succeeded interval default null,
  retain_cancelled interval default null,
  retain_failed interval default null,
  keep_forever text[] default null,
  limits jsonb default null
) returns void
  language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
#variable_conflict use_column
begin
  if kind is null or kind !~ '^[A-Za-z0-9_.:-]{1,100}$' then
    perform holdfast._raise('HF002', format('holdfast: invalid kind name %L', define_kind.kind),
      'a kind is 1 to 100 characters of letters, digits, _ . : -');
  end if;
  if define_kind.max_attempts is not null and define_kind.max_attempts < 1 then
    perform holdfast._raise('HF002', 'holdfast: max_attempts must be at least 1');
  end if;
  if define_kind.min_interval is not null and define_kind.min_interval < interval '0' then
    perform holdfast._raise('HF002', 'holdfast: min_interval must not be negative');
  end if;
  if define_kind.batch_max is not null and define_kind.batch_max not between 1 and 1000 then
    perform holdfast._raise('HF002', 'holdfast: batch_max must be between 1 and 1000');
  end if;
  if define_kind.max_running is not null and define_kind.max_running not between 0 and 10000 then
    perform holdfast._raise('HF002', 'holdfast: max_running must be between 1 and 10000 (0: no cap)');
  end if;
  if define_kind.retain_succeeded < interval '0' or define_kind.retain_cancelled < interval '0'
     or define_kind.retain_failed < interval '0' then
    perform holdfast._raise('HF002', 'holdfast: a retention must not be negative');
  end if;
  if exists (select 1 from unnest(define_kind.keep_forever) s
             where s is null or s not in ('succeeded', 'cancelled', 'failed')) then
    perform holdfast._raise('HF002', 'holdfast: keep_forever lists end states: succeeded, cancelled, failed');
  end if;
  if ('succeeded' = any (define_kind.keep_forever) and define_kind.retain_succeeded is not null)
     or ('cancelled' = any (define_kind.keep_forever) and define_kind.retain_cancelled is not null)
     or ('failed' = any (define_kind.keep_forever) and define_kind.retain_failed is not null) then
    perform holdfast._raise('HF002', 'holdfast: a state is given a retention and keep_forever at once');
  end if;
  insert into holdfast.kinds as k (kind, max_attempts, min_interval, batch_max, strict_order,
                                   max_running)
  values (define_kind.kind, coalesce(define_kind.max_attempts, 5),
          coalesce(define_kind.min_interval, interval '0'), coalesce(define_kind.batch_max, 1),
          coalesce(define_kind.strict_order, true), nullif(define_kind.max_running, 0))
  on conflict (kind) do update set
    max_attempts = coalesce(define_kind.max_attempts, k.max_attempts),
    min_interval = coalesce(define_kind.min_interval, k.min_interval),
    batch_max = coalesce(define_kind.batch_max, k.batch_max),
    strict_order = coalesce(define_kind.strict_order, k.strict_order),
    max_running = case when define_kind.max_running is null then k.max_running
                       else nullif(define_kind.max_running, 0) end;
  -- limits: the units each run reserves per limit (api/37_limits.sql: _set_kind_limits).
  perform holdfast._set_kind_limits(define_kind.kind, define_kind.limits);
  -- keep_checkpoint: a success keeps the task's checkpoint (api/55_checkpoint.sql).
  if define_kind.keep_checkpoint is not null then
    update holdfast.kinds k set keep_checkpoint = define_kind.keep_checkpoint
    where k.kind = define_kind.kind;
  end if;
  -- A new kind has the columns' default retention (migrations/0004_retention.sql).
  if define_kind.retain_succeeded is not null or define_kind.retain_cancelled is not null
     or define_kind.retain_failed is not null or define_kind.keep_forever is not null then
    update holdfast.kinds k set
      retain_succeeded = case when 'succeeded' = any (define_kind.keep_forever) then null
        else coalesce(define_kind.retain_succeeded, k.retain_succeeded) end,
      retain_cancelled = case when 'cancelled' = any (define_kind.keep_forever) then null
        else coalesce(define_kind.retain_cancelled, k.retain_cancelled) end,
      retain_failed = case when 'failed' = any (define_kind.keep_forever) then null
        else coalesce(define_kind.retain_failed, k.retain_failed) end
    where k.kind = define_kind.kind;
  end if;
  -- A raised or removed cap makes room: the kind's workers may be waiting for a slot.
  if define_kind.max_running is not null then
    perform pg_notify('holdfast', define_kind.kind);
  end if;
end $$;
select holdfast._grant('execute',
  'function holdfast.define_kind(text, int, interval, int, boolean, int, boolean, interval, interval, interval, text[], jsonb)',
  'holdfast_worker');
