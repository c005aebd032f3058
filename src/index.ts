// The core. Inspecting, the dashboard and metrics have entry points of their own:
// holdfast/inspect, holdfast/dashboard, holdfast/metrics.
export {
  ConfigError,
  ConnectionError,
  EnqueueItemError,
  HoldfastError,
  InvalidArgumentError,
  LockLostError,
  MigrationError,
  PermissionDeniedError,
  ShutdownError,
  StaleFenceError,
  TaskCancelledError,
  TaskNotFoundError,
  ThrottledError,
  UnknownKindError,
} from "./errors.js";
export { Holdfast } from "./holdfast.js";
export type { LimitOptions, LimitUsage } from "./limits.js";
// hf.metrics() returns one (the class itself: holdfast/metrics).
export type { HoldfastMetrics, MetricsOptions } from "./metrics.js";
export type { MigrateResult } from "./migrate.js";
export { type HoldfastOptions, workerDefaults } from "./options.js";
export type { Schedule, ScheduleOptions } from "./schedules.js";
export type { TracerProviderLike, TracingOptions } from "./tracing.js";
export type {
  Attempt,
  BatchHandler,
  BatchKindOptions,
  CheckpointOptions,
  DeadLetter,
  DefineKindOptions,
  EnqueueOptions,
  EnqueueResult,
  Handler,
  HandlerContext,
  Interval,
  KindOptions,
  KindSettings,
  LockSessionOptions,
  ProducerOptions,
  Queryable,
  Retention,
  Task,
  WorkerOptions,
} from "./types.js";
export type { PreviousHolder, WorkerEvents } from "./worker/events.js";
export { lockSessionDefaults } from "./worker/lock-session.js";
export type { Worker } from "./worker/worker.js";
