-- Fenced checkpoints (functions: sql/api/55_checkpoint.sql). A running task's holder stores
-- a JSON value under its fence; the task's next attempt receives it with its claim.
-- checkpoint_fence: the fence of the run that wrote it, so "checkpointed since this run
-- started" is checkpoint_fence = fence (a shutdown hands such a run over without counting an
-- attempt); checkpoint_at: when it was written (its age shows a run that stopped progressing).
alter table holdfast.tasks add column checkpoint jsonb;
alter table holdfast.tasks add column checkpoint_at timestamptz;
alter table holdfast.tasks add column checkpoint_fence bigint;

-- keep_checkpoint: a success keeps the task's checkpoint (default: a success clears it).
alter table holdfast.kinds add column keep_checkpoint boolean not null default false;
