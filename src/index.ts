export {
  ConfigError,
  ConnectionError,
  HoldfastError,
  InvalidArgumentError,
  LockLostError,
  PermissionDeniedError,
  ShutdownError,
  StaleFenceError,
  TaskCancelledError,
  TaskNotFoundError,
  UnknownKindError,
} from "./errors.js";
export { Holdfast } from "./holdfast.js";
export type { MigrateResult } from "./migrate.js";
export { type HoldfastOptions, workerDefaults } from "./options.js";
export type {
  Attempt,
  BatchHandler,
  BatchKindOptions,
  DeadLetter,
  DefineKindOptions,
  EnqueueOptions,
  EnqueueResult,
  Handler,
  HandlerContext,
  Interval,
  KindOptions,
  KindSettings,
  Queryable,
  Task,
  WorkerOptions,
} from "./types.js";
export type { Worker, WorkerEvents } from "./worker/worker.js";
