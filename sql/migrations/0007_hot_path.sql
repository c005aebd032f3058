-- The per-task path (bench/task-cost.ts measures it).
-- Room on each page for updates that change no indexed column (a claimed-ahead run's start,
-- a checkpoint) to stay on the page as HOT updates, with no new index entries. New pages only;
-- existing ones get the room as vacuum frees them.
alter table holdfast.tasks set (fillfactor = 90);

-- A kind whose succeeded retention is 0 deletes its task at completion (no attempt row, no
-- later prune). Its key row stays until the pruner takes it: emptied_at marks a key row that
-- a completion left without any task, so a prune batch finds it (keys_emptied) without a scan
-- and deletes it with the fence floor raised once per batch (api/55_prune.sql). Its index is
-- built without blocking writes: 0007_keys_emptied_index.sql.
alter table holdfast.keys add column emptied_at timestamptz;
