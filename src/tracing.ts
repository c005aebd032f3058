import type pg from "pg";
import type { Logger } from "pino";
import { LockLostError, ShutdownError, TaskCancelledError } from "./errors.js";
import type { Outcome, Run } from "./worker/runs.js";

/*
 * OpenTelemetry spans (docs/tracing.md). @opentelemetry/api is an optional peer dependency:
 * loaded lazily, and only the few members used here are typed, structurally, so the library
 * builds, type-checks and runs without it. With no tracer provider registered, every hook
 * returns at its first check: no span, no trace context written, no query.
 */

/** Options of `new Holdfast({ tracing })`; `tracing: false` turns every span off. */
export interface TracingOptions {
  /** A tracer provider to use instead of the globally registered one (any OpenTelemetry
   *  TracerProvider). Default: the global provider of @opentelemetry/api. */
  tracerProvider?: TracerProviderLike;
  /**
   * Make each run's span a child of the enqueuing span as well as linked to it, so one trace
   * holds the task from the request to its last attempt. Default false: a run starts its own
   * trace and links to the enqueue (the messaging conventions' default for work that may run
   * long after it was sent, and many times).
   */
  parentRuns?: boolean;
}

/** The part of an OpenTelemetry TracerProvider holdfast calls. */
export interface TracerProviderLike {
  getTracer(name: string, version?: string): unknown;
}

type Attributes = Record<string, string | number | boolean>;

interface SpanContext {
  traceId: string;
  spanId: string;
  traceFlags: number;
  isRemote?: boolean;
  traceState?: { serialize(): string };
}

interface Span {
  spanContext(): SpanContext;
  setAttribute(key: string, value: string | number | boolean): unknown;
  addEvent(name: string, attributes?: Attributes): unknown;
  recordException(exception: unknown): void;
  setStatus(status: { code: number; message?: string }): unknown;
  end(): void;
}

interface Tracer {
  startSpan(
    name: string,
    options: { kind: number; attributes?: Attributes; links?: Array<{ context: SpanContext }> },
    context?: unknown,
  ): Span;
}

interface OtelApi {
  trace: {
    getTracerProvider(): TracerProviderLike & { getDelegateTracer?(name: string): unknown };
    setSpan(context: unknown, span: Span): unknown;
    setSpanContext(context: unknown, spanContext: SpanContext): unknown;
  };
  context: { active(): unknown; with<T>(context: unknown, fn: () => T): T };
  ROOT_CONTEXT: unknown;
  createTraceState(value: string): { serialize(): string };
}

const SpanKind = { PRODUCER: 3, CONSUMER: 4 } as const;
const StatusCode = { OK: 1, ERROR: 2 } as const;
const tracerName = "holdfast";

// A variable, so TypeScript does not resolve the optional module at build time.
const apiModule = "@opentelemetry/api";
let apiLoad: Promise<OtelApi | undefined> | undefined;
function loadApi(): Promise<OtelApi | undefined> {
  apiLoad ??= import(apiModule).then(
    (m: OtelApi) => m,
    () => undefined,
  );
  return apiLoad;
}

/** A task's trace context as SQL stores it (holdfast.task_traces). */
export interface TraceFields {
  traceparent: string;
  tracestate: string | null;
}

/** The producer span of one enqueue call, and the context its tasks carry. */
export interface EnqueueSpan {
  fields: TraceFields;
  /** Runs `fn` (the enqueue statement) inside the span, and ends it with the ids. */
  around<R>(
    fn: () => Promise<R>,
    ids: (r: R) => Array<{ id: number; deduped: boolean }>,
  ): Promise<R>;
}

interface RunSpan {
  span: Span;
  left: number;
  failed: boolean;
}

/** Run spans, by run: also read by the checkpoint hook in runs.ts (traceEvent). */
const runSpans = new WeakMap<Run, RunSpan>();

/** Adds an event to a run's span, if it has one. */
export function traceEvent(run: Run, name: string, attributes?: Attributes): void {
  runSpans.get(run)?.span.addEvent(name, attributes);
}

export class Tracing {
  private api: OtelApi | undefined;
  private readonly ready: Promise<void> | undefined;
  /** Trace contexts read for claimed runs, by the run's first task. */
  private readonly lookups = new WeakMap<object, Promise<Map<number, TraceFields>>>();

  constructor(private readonly options: TracingOptions | false = {}) {
    if (options !== false)
      this.ready = loadApi().then((api) => {
        this.api = api;
      });
  }

  /** The tracer, when spans are recorded: the API is loaded and a provider is registered. */
  private tracer(): Tracer | undefined {
    const api = this.api;
    if (!api || this.options === false) return undefined;
    const own = this.options.tracerProvider;
    if (own) return own.getTracer(tracerName) as Tracer;
    const provider = api.trace.getTracerProvider();
    // The global provider is a proxy: without a registered SDK it has no delegate.
    if (provider.getDelegateTracer && provider.getDelegateTracer(tracerName) === undefined)
      return undefined;
    return provider.getTracer(tracerName) as Tracer;
  }

  /** Spans are recorded now (checked per claim batch: a provider may be registered late). */
  get active(): boolean {
    return this.tracer() !== undefined;
  }

  /**
   * The producer span of an enqueue of `count` tasks of `kind`, or undefined when not tracing.
   * Waits for the API only while it is still loading (the first calls after construction).
   */
  enqueueSpan(
    kind: string,
    count: number,
    key?: string,
  ): EnqueueSpan | undefined | Promise<EnqueueSpan | undefined> {
    if (this.api === undefined && this.ready)
      return this.ready.then(() => this.api && this.startEnqueue(kind, count, key));
    return this.startEnqueue(kind, count, key);
  }

  private startEnqueue(kind: string, count: number, key?: string): EnqueueSpan | undefined {
    const tracer = this.tracer();
    const api = this.api;
    if (!tracer || !api) return undefined;
    const attributes: Attributes = {
      "messaging.system": "holdfast",
      "messaging.operation.type": "send",
      "messaging.operation.name": "enqueue",
      "messaging.destination.name": kind,
      "holdfast.kind": kind,
    };
    if (key !== undefined) attributes["holdfast.key"] = key;
    if (count !== 1) attributes["messaging.batch.message_count"] = count;
    const span = tracer.startSpan(
      `holdfast.enqueue ${kind}`,
      { kind: SpanKind.PRODUCER, attributes },
      api.context.active(),
    );
    const sc = span.spanContext();
    if (!validIds(sc)) {
      span.end();
      return undefined;
    }
    const fields: TraceFields = {
      traceparent: `00-${sc.traceId}-${sc.spanId}-${(sc.traceFlags & 0xff).toString(16).padStart(2, "0")}`,
      tracestate: sc.traceState?.serialize() || null,
    };
    return {
      fields,
      around: async (fn, ids) => {
        try {
          const result = await api.context.with(api.trace.setSpan(api.context.active(), span), fn);
          const rows = ids(result);
          if (rows.length === 1 && rows[0]) {
            span.setAttribute("messaging.message.id", String(rows[0].id));
            span.setAttribute("holdfast.task.id", rows[0].id);
            span.setAttribute("holdfast.deduped", rows[0].deduped);
          }
          return result;
        } catch (err) {
          span.recordException(err);
          span.setStatus({ code: StatusCode.ERROR, message: (err as Error)?.message });
          throw err;
        } finally {
          span.end();
        }
      },
    };
  }

  /** Starts reading the trace context of claimed runs (one query for the claim), when tracing. */
  claimed(pool: pg.Pool, runs: Array<Array<{ id: number }>>, logger: Logger): void {
    if (runs.length === 0 || !this.active) return;
    const ids = runs.flatMap((tasks) => tasks.map((t) => t.id));
    const lookup = pool
      .query<{ task_id: string; traceparent: string; tracestate: string | null }>(
        "select task_id, traceparent, tracestate from holdfast.task_traces($1::bigint[])",
        [ids],
      )
      .then(
        (r) => new Map(r.rows.map((row) => [Number(row.task_id), row])),
        (err: unknown) => {
          // Spans lose their links; the runs do not wait or fail for it.
          logger.warn(
            { event: "trace_read_failed", err },
            "holdfast: could not read trace context",
          );
          return new Map<number, TraceFields>();
        },
      );
    for (const tasks of runs) if (tasks[0]) this.lookups.set(tasks[0], lookup);
  }

  /**
   * Calls the run's handler inside its span (`holdfast.run <kind>`), linked to the span of
   * each of its tasks' enqueue; without a tracer, calls it as is.
   */
  run(run: Run, worker: string, handler: () => Promise<void>): Promise<void> {
    const lookup = this.lookups.get(run.task);
    const tracer = this.tracer();
    if (!tracer) return handler();
    return (lookup ?? Promise.resolve(new Map<number, TraceFields>())).then((contexts) =>
      this.startRun(tracer, run, worker, contexts, handler),
    );
  }

  private startRun(
    tracer: Tracer,
    run: Run,
    worker: string,
    contexts: Map<number, TraceFields>,
    handler: () => Promise<void>,
  ): Promise<void> {
    const api = this.api as OtelApi;
    const { task, tasks } = run;
    const links = tasks.flatMap((t) => {
      const fields = contexts.get(t.id);
      const sc = fields && this.parse(fields);
      return sc ? [{ context: sc }] : [];
    });
    const attributes: Attributes = {
      "messaging.system": "holdfast",
      "messaging.operation.type": "process",
      "messaging.operation.name": "run",
      "messaging.destination.name": task.kind,
      "messaging.message.id": String(task.id),
      "holdfast.kind": task.kind,
      "holdfast.key": task.key,
      "holdfast.task.id": task.id,
      "holdfast.attempt": task.attempt,
      "holdfast.fence": task.fence,
      "holdfast.worker": worker,
    };
    if (tasks.length > 1) attributes["messaging.batch.message_count"] = tasks.length;
    const parent =
      this.options !== false && this.options.parentRuns && links[0]
        ? api.trace.setSpanContext(api.ROOT_CONTEXT, links[0].context)
        : api.ROOT_CONTEXT;
    const span = tracer.startSpan(
      `holdfast.run ${task.kind}`,
      { kind: SpanKind.CONSUMER, attributes, links },
      parent,
    );
    runSpans.set(run, { span, left: tasks.length, failed: false });
    const signal = run.controller.signal;
    signal.addEventListener(
      "abort",
      () => {
        const reason = signal.reason;
        if (reason instanceof LockLostError)
          span.addEvent("holdfast.lock_lost", { "exception.message": reason.message });
        span.addEvent("holdfast.abort", {
          "holdfast.abort.reason":
            reason instanceof LockLostError
              ? "lock_lost"
              : reason instanceof TaskCancelledError
                ? "cancelled"
                : reason instanceof ShutdownError
                  ? "shutdown"
                  : "other",
        });
      },
      { once: true },
    );
    return api.context.with(api.trace.setSpan(api.ROOT_CONTEXT, span), handler);
  }

  /** One task of a run ended: its outcome on the span, which ends with the run's last task. */
  finished(run: Run, outcome: Outcome, error?: unknown): void {
    const state = runSpans.get(run);
    if (!state) return;
    const { span } = state;
    if (run.tasks.length === 1) span.setAttribute("holdfast.outcome", outcome);
    else span.addEvent("holdfast.task_end", { "holdfast.outcome": outcome });
    if (outcome === "failed" || outcome === "lost" || outcome === "rejected") {
      if (!state.failed) {
        state.failed = true;
        if (error !== undefined) span.recordException(error);
        span.setStatus({
          code: StatusCode.ERROR,
          message: error instanceof Error ? error.message : outcome,
        });
      }
    }
    state.left -= 1;
    if (state.left > 0) return;
    if (run.tasks.length > 1) span.setAttribute("holdfast.outcome", outcome);
    if (!state.failed && outcome === "succeeded") span.setStatus({ code: StatusCode.OK });
    runSpans.delete(run);
    span.end();
  }

  private parse(fields: TraceFields): SpanContext | undefined {
    const m = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/.exec(
      fields.traceparent,
    );
    if (!m || !this.api) return undefined;
    const sc: SpanContext = {
      traceId: m[2] as string,
      spanId: m[3] as string,
      traceFlags: Number.parseInt(m[4] as string, 16) & 1,
      isRemote: true,
    };
    if (!validIds(sc)) return undefined;
    if (fields.tracestate) sc.traceState = this.api.createTraceState(fields.tracestate);
    return sc;
  }
}

function validIds(sc: SpanContext): boolean {
  return !/^0+$/.test(sc.traceId) && !/^0+$/.test(sc.spanId);
}
