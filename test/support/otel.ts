// The OpenTelemetry SDK as an application registers it, with spans kept in memory (the SDK's
// InMemorySpanExporter), for the tracing tests and their child processes.
import { context, trace } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  type ReadableSpan,
  SimpleSpanProcessor,
  type Span,
  type SpanProcessor,
} from "@opentelemetry/sdk-trace-base";

/** A span as plain JSON (what a child process prints, and what tests compare). */
export interface SpanJson {
  name: string;
  kind: number;
  traceId: string;
  spanId: string;
  parentSpanId: string | null;
  attributes: Record<string, unknown>;
  links: Array<{ traceId: string; spanId: string }>;
  events: string[];
  status: { code: number; message?: string };
  /** Set on a span that has not ended (reported when it started). */
  open?: boolean;
}

export function spanJson(s: ReadableSpan, open = false): SpanJson {
  const sc = s.spanContext();
  return {
    name: s.name,
    kind: s.kind,
    traceId: sc.traceId,
    spanId: sc.spanId,
    parentSpanId: s.parentSpanContext?.spanId ?? null,
    attributes: { ...s.attributes },
    links: s.links.map((l) => ({ traceId: l.context.traceId, spanId: l.context.spanId })),
    events: s.events.map((e) => e.name),
    status: { ...s.status },
    ...(open ? { open: true } : {}),
  };
}

/** Registers a global tracer provider whose finished spans land in the returned exporter;
 *  `onStart` also sees each span as it starts (a process killed mid-span never ends it). */
export function registerOtel(onStart?: (span: SpanJson) => void): InMemorySpanExporter {
  const exporter = new InMemorySpanExporter();
  const processors: SpanProcessor[] = [new SimpleSpanProcessor(exporter)];
  if (onStart) {
    processors.push({
      onStart: (span: Span) => onStart(spanJson(span as unknown as ReadableSpan, true)),
      onEnd: () => {},
      forceFlush: async () => {},
      shutdown: async () => {},
    });
  }
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: processors }));
  return exporter;
}
