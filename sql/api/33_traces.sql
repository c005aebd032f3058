-- Trace context (docs/tracing.md): what enqueue_task and enqueue_many accept as traceparent
-- and tracestate, and the worker's read of it for the tasks it starts.

-- What is wrong with a W3C trace context, or null. traceparent: version-traceid-spanid-flags in
-- lowercase hex (an all-zero trace or span id is invalid); tracestate: at most 512 bytes.
create function holdfast._trace_error(traceparent text, tracestate text) returns text
  language sql immutable as $$
  select case
    when traceparent is null and tracestate is not null then 'tracestate needs a traceparent'
    when traceparent is null then null
    when traceparent !~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
      or substr(traceparent, 1, 2) = 'ff'
      or substr(traceparent, 4, 32) = repeat('0', 32)
      or substr(traceparent, 37, 16) = repeat('0', 16) then
      'traceparent must be a W3C traceparent (00-<32 hex trace id>-<16 hex span id>-<2 hex flags>)'
    when octet_length(tracestate) > 512 then 'tracestate is longer than 512 bytes'
  end
$$;

-- The trace context each of the given tasks was enqueued under (tasks without one: no row).
create function holdfast.task_traces(ids bigint[])
returns table (task_id bigint, traceparent text, tracestate text)
  language sql stable security definer set search_path = pg_catalog, pg_temp as $$
  select t.task_id, t.traceparent, t.tracestate from holdfast.task_traces t
  where t.task_id = any (ids)
$$;
select holdfast._grant('execute', 'function holdfast.task_traces(bigint[])',
  'holdfast_worker', 'holdfast_observer');
select holdfast._grant('select', 'holdfast.task_traces', 'holdfast_observer');
