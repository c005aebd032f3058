-- holdfast: no-transaction
-- Key rows a completion left without a task (0007_hot_path.sql), for the pruner to find
-- without a scan. Built concurrently: a plain build would hold every enqueue and claim for as
-- long as it reads holdfast.keys.
create index concurrently if not exists keys_emptied on holdfast.keys (emptied_at)
  where emptied_at is not null;
