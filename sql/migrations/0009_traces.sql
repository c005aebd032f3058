-- The W3C trace context a task was enqueued under (functions: sql/api/33_traces.sql), so each
-- attempt's span links to the enqueuing span, whichever process or language enqueued it. Its
-- own table: holdfast.tasks keeps exactly its columns (workers of earlier releases expand
-- them), and a row exists only for a traced enqueue, so an untraced one writes nothing more.
-- Deleted with its task (pruning, a completion that deletes it) by the cascade, one primary
-- key lookup per deleted task.
create table holdfast.task_traces (
  task_id bigint primary key references holdfast.tasks (id) on delete cascade,
  traceparent text not null,
  tracestate text
);
