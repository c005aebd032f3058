// holdfast/inspect: who holds which key, who waits, orphans, queues, schedules, limits, versions
// (the `holdfast inspect` command's snapshot, for code of your own).
export type {
  Capacity,
  ClockInfo,
  Holder,
  InspectFilters,
  LimitInfo,
  Orphan,
  QueueRow,
  ScheduleInfo,
  Snapshot,
  Versions,
  Waiter,
} from "./snapshot.js";
export { takeSnapshot } from "./snapshot.js";
