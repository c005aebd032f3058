import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { context, trace } from "@opentelemetry/api";
import pg from "pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Holdfast, type Task, ThrottledError } from "../src/index.js";
import type { WorkerOptions } from "../src/types.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";
import { collectJsonLines } from "./support/json-lines.js";
import { registerOtel, type SpanJson, spanJson } from "./support/otel.js";
import { until } from "./support/wait.js";

const exporter = registerOtel();
const tracer = trace.getTracer("test");
let db: TestDatabase;
let hf: Holdfast;

beforeAll(async () => {
  db = await freshDatabase();
  hf = new Holdfast({ pool: db.pool, logger: silent });
  for (const kind of ["job", "gone"]) await hf.defineKind(kind, { maxAttempts: 1 });
  await hf.defineKind("gone", { retention: { succeeded: 0 } });
});
afterAll(async () => {
  await hf?.close();
  await db?.drop();
});

const spans = (): SpanJson[] => exporter.getFinishedSpans().map((s) => spanJson(s));
const runSpan = (id: number): SpanJson | undefined =>
  spans().find((s) => s.name.startsWith("holdfast.run") && s.attributes["holdfast.task.id"] === id);
const traceRows = async (ids: number[]) =>
  (
    await db.pool.query<{ task_id: string; traceparent: string; tracestate: string | null }>(
      "select * from holdfast.task_traces where task_id = any ($1::bigint[]) order by task_id",
      [ids],
    )
  ).rows;

/** Runs a worker until each of `ids` has ended (its span is exported by then). */
async function runTasks(ids: number[], handlers: WorkerOptions["handlers"]): Promise<void> {
  const worker = hf.worker({ handlers });
  const left = new Set(ids);
  const done = new Promise<void>((resolve) =>
    worker.on("task:end", (t) => {
      left.delete(t.id);
      if (left.size === 0) resolve();
    }),
  );
  await worker.start();
  await done;
  await worker.stop();
}

/** Resolves once `signal` is aborted (at once if it is already). */
function aborted(signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => signal.addEventListener("abort", () => resolve()));
}

/** A span around `fn`, as an instrumented HTTP server opens one per request. */
async function inRequest<T>(fn: () => Promise<T>): Promise<{ result: T; request: SpanJson }> {
  const span = tracer.startSpan("POST /dreams");
  const result = await context.with(trace.setSpan(context.active(), span), fn);
  span.end();
  const request = spans().find((s) => s.spanId === span.spanContext().spanId) as SpanJson;
  return { result, request };
}

it("a run's span links to its enqueue's span, carries the run's attributes, and holds the handler's own spans", async () => {
  const { result, request } = await inRequest(() =>
    hf.enqueue("job", { key: "ws:alice", payload: { n: 1 } }),
  );
  const enqueue = spans().find(
    (s) => s.name === "holdfast.enqueue job" && s.traceId === request.traceId,
  );
  expect(enqueue).toMatchObject({
    kind: 3,
    parentSpanId: request.spanId,
    attributes: {
      "messaging.system": "holdfast",
      "messaging.operation.type": "send",
      "messaging.destination.name": "job",
      "messaging.message.id": String(result.id),
      "holdfast.key": "ws:alice",
    },
  });
  const [row] = await traceRows([result.id]);
  expect(row?.traceparent).toBe(`00-${enqueue?.traceId}-${enqueue?.spanId}-01`);

  await runTasks([result.id], {
    job: async (_task: Task, ctx) => {
      await tracer.startActiveSpan("llm call", async (s) => s.end());
      await ctx.checkpoint({ step: 1 });
    },
  });
  const run = runSpan(result.id) as SpanJson;
  expect(run).toMatchObject({
    name: "holdfast.run job",
    kind: 4,
    parentSpanId: null,
    links: [{ traceId: enqueue?.traceId, spanId: enqueue?.spanId }],
    attributes: {
      "messaging.system": "holdfast",
      "messaging.operation.type": "process",
      "messaging.destination.name": "job",
      "messaging.message.id": String(result.id),
      "holdfast.kind": "job",
      "holdfast.key": "ws:alice",
      "holdfast.attempt": 1,
      "holdfast.outcome": "succeeded",
    },
    events: ["holdfast.checkpoint"],
    status: { code: 1 },
  });
  expect(run.attributes["holdfast.fence"]).toEqual(expect.any(Number));
  expect(run.attributes["holdfast.worker"]).toEqual(expect.any(String));
  const own = spans().find((s) => s.name === "llm call");
  expect(own).toMatchObject({ traceId: run.traceId, parentSpanId: run.spanId });
});

it("a failed run records its error and an error status; a cancelled one its abort", async () => {
  const failed = await hf.enqueue("job", { key: "ws:fail" });
  await runTasks([failed.id], {
    job: async () => {
      throw new Error("model overloaded");
    },
  });
  expect(runSpan(failed.id)).toMatchObject({
    attributes: { "holdfast.outcome": "failed" },
    events: ["exception"],
    status: { code: 2, message: "model overloaded" },
  });

  const cancelled = await hf.enqueue("job", { key: "ws:cancel" });
  await runTasks([cancelled.id], {
    job: async (_task: Task, ctx) => {
      await hf.cancel(cancelled.id);
      await aborted(ctx.signal);
      throw ctx.signal.reason;
    },
  });
  expect(runSpan(cancelled.id)).toMatchObject({
    attributes: { "holdfast.outcome": "cancelled" },
    events: expect.arrayContaining(["holdfast.abort"]),
  });
});

it("a run whose lock session is lost ends lost, with a lock_lost event", async () => {
  const { id } = await hf.enqueue("job", { key: "ws:partition" });
  await runTasks([id], {
    job: async (_task: Task, ctx) => {
      await db.pool.query(
        "select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and application_name like 'holdfast:lock:%'",
      );
      await aborted(ctx.signal);
    },
  });
  expect(runSpan(id)).toMatchObject({
    attributes: { "holdfast.outcome": "lost" },
    events: expect.arrayContaining(["holdfast.lock_lost", "holdfast.abort"]),
    status: { code: 2 },
  });
});

it("a throttled run ends throttled", async () => {
  await hf.defineLimit("provider", { units: 100, per: "1 minute" });
  await hf.defineKind("limited", { limits: { provider: 1 } });
  const { id } = await hf.enqueue("limited", { key: "ws:429" });
  await runTasks([id], {
    limited: async () => {
      throw new ThrottledError("provider", 60_000);
    },
  });
  expect(runSpan(id)?.attributes["holdfast.outcome"]).toBe("throttled");
  await hf.cancel(id);
});

it("a traceparent given through plain SQL, as a Python producer sends it, continues in the TypeScript run", async () => {
  const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
  const parent = (span: string) => `00-${traceId}-${span}-01`;
  const one = await db.pool.query<{ id: string }>(
    "select holdfast.enqueue('job', 'py:one', '{}', traceparent => $1, tracestate => 'vendor=py') as id",
    [parent("00f067aa0ba902b7")],
  );
  const many = await db.pool.query<{ id: string }>(
    "select id from holdfast.enqueue_many('job', $1::jsonb)",
    [
      JSON.stringify([
        { key: "py:many", traceparent: parent("00f067aa0ba902b8") },
        { key: "py:many" }, // untraced: no row
      ]),
    ],
  );
  const ids = [one.rows[0]?.id, ...many.rows.map((r) => r.id)].map(Number);
  expect(
    (await traceRows(ids)).map((r) => [Number(r.task_id), r.traceparent, r.tracestate]),
  ).toEqual([
    [ids[0], parent("00f067aa0ba902b7"), "vendor=py"],
    [ids[1], parent("00f067aa0ba902b8"), null],
  ]);
  await runTasks(ids, { job: async () => {} });
  expect(runSpan(ids[0] as number)?.links).toEqual([{ traceId, spanId: "00f067aa0ba902b7" }]);
  expect(runSpan(ids[1] as number)?.links).toEqual([{ traceId, spanId: "00f067aa0ba902b8" }]);
  expect(runSpan(ids[2] as number)?.links).toEqual([]);
  const linked = exporter
    .getFinishedSpans()
    .find((s) => s.attributes["holdfast.task.id"] === ids[0] && s.links.length > 0);
  expect(linked?.links[0]?.context.traceState?.get("vendor")).toBe("py");
});

it("a malformed trace context is refused with HF002, from enqueue and enqueue_many", async () => {
  await expect(
    db.pool.query("select holdfast.enqueue('job', 'bad', '{}', traceparent => 'not-a-trace')"),
  ).rejects.toMatchObject({ code: "HF002", message: expect.stringMatching(/traceparent/) });
  await expect(
    db.pool.query("select holdfast.enqueue('job', 'bad', '{}', tracestate => 'a=b')"),
  ).rejects.toMatchObject({ code: "HF002" });
  await expect(
    db.pool.query("select * from holdfast.enqueue_many('job', $1::jsonb)", [
      JSON.stringify([
        { key: "bad" },
        { key: "bad", traceparent: `00-${"0".repeat(32)}-00f067aa0ba902b7-01` },
      ]),
    ]),
  ).rejects.toMatchObject({ code: "HF002", message: expect.stringMatching(/tasks\[1\]/) });
});

it("untraced enqueues write no trace rows, and cost no producer span", async () => {
  const untraced = new Holdfast({ pool: db.pool, logger: silent, tracing: false });
  const before = spans().length;
  const ids = [
    (await untraced.enqueue("job", { key: "quiet" })).id,
    ...(await untraced.enqueueMany("job", [{ key: "quiet" }, { key: "quiet:2" }])).map((r) => r.id),
    Number(
      (await db.pool.query<{ id: string }>("select holdfast.enqueue('job', 'quiet:sql') as id"))
        .rows[0]?.id,
    ),
  ];
  expect(spans().length).toBe(before);
  expect(await traceRows(ids)).toEqual([]);
  await untraced.close();
});

it("a trace row leaves with its task", async () => {
  const traced = await hf.enqueueMany("gone", [{ key: "gone:1" }, { key: "gone:2" }]);
  const ids = traced.map((r) => r.id);
  expect(await traceRows(ids)).toHaveLength(2);
  // Retention 0: each task is deleted at its completion.
  await runTasks(ids, { gone: async () => {} });
  await until(async () => (await traceRows(ids)).length === 0);

  // Kept 1 ms, then pruned: holdfast.prune's batch deletes the rows with their tasks.
  await hf.defineKind("kept", { retention: { succeeded: 1 } });
  const kept = (await hf.enqueueMany("kept", [{ key: "kept:1" }, { key: "kept:2" }])).map(
    (r) => r.id,
  );
  await runTasks(kept, { kept: async () => {} });
  expect(await traceRows(kept)).toHaveLength(2);
  await until(async () => {
    await db.pool.query("select holdfast.prune(1000)");
    const { rows } = await db.pool.query("select id from holdfast.tasks where id = any ($1)", [
      kept,
    ]);
    return rows.length === 0;
  });
  expect(await traceRows(kept)).toEqual([]);
});

it("the producer role stores a trace context, the worker role reads it, and neither writes the table", async () => {
  const suffix = Math.random().toString(16).slice(2, 10);
  const roles = { producer: `hf_tp_${suffix}`, worker: `hf_tw_${suffix}` };
  const clients: pg.Client[] = [];
  const as = async (role: keyof typeof roles) => {
    const u = new URL(db.url);
    u.username = roles[role];
    u.password = "pw";
    const c = new pg.Client({ connectionString: u.toString() });
    await c.connect();
    clients.push(c);
    return c;
  };
  try {
    for (const [role, user] of Object.entries(roles)) {
      await db.pool.query(`create role ${user} login password 'pw'`);
      await db.pool.query(`grant holdfast_${role} to ${user}`);
    }
    const producer = await as("producer");
    const worker = await as("worker");
    const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902c1-01";
    const { rows } = await producer.query<{ id: string }>(
      "select holdfast.enqueue('job', 'roles:1', traceparent => $1) as id",
      [tp],
    );
    const read = await worker.query("select traceparent from holdfast.task_traces($1::bigint[])", [
      [rows[0]?.id],
    ]);
    expect(read.rows).toEqual([{ traceparent: tp }]);
    for (const c of [producer, worker])
      await expect(c.query("delete from holdfast.task_traces")).rejects.toMatchObject({
        code: "42501",
      });
  } finally {
    await Promise.all(clients.map((c) => c.end()));
    for (const user of Object.values(roles)) await db.pool.query(`drop role if exists ${user}`);
  }
});

it("without @opentelemetry/api installed, holdfast enqueues and runs tasks, and stores no trace context", async () => {
  await hf.defineKind("plain");
  const fixture = fileURLToPath(new URL("./fixtures/without-otel.ts", import.meta.url));
  const child = spawn(process.execPath, ["--import", "tsx", fixture], {
    env: { ...process.env, DATABASE_URL: db.url },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const { waitFor } = collectJsonLines<{
    event: string;
    apiLoads: boolean;
    ids: number[];
    ended: Array<{ id: number; outcome: string }>;
  }>(child, "holdfast without @opentelemetry/api");
  const done = await waitFor((l) => l.event === "done", 60_000);
  expect(done.apiLoads).toBe(false); // the hook hides the package, as an uninstalled one
  expect(done.ended.map((e) => e.outcome)).toEqual(["succeeded", "succeeded"]);
  expect(await traceRows(done.ids)).toEqual([]);
});

it("with parentRuns, each run's span is also a child of its enqueue's span, in the request's trace", async () => {
  const parented = new Holdfast({ pool: db.pool, logger: silent, tracing: { parentRuns: true } });
  try {
    const { result, request } = await inRequest(() =>
      parented.enqueue("job", { key: "ws:one-trace" }),
    );
    const enqueue = spans().find(
      (s) => s.name === "holdfast.enqueue job" && s.parentSpanId === request.spanId,
    );
    const worker = parented.worker({ handlers: { job: async () => {} } });
    const ended = new Promise<void>((resolve) =>
      worker.on("task:end", (t) => t.id === result.id && resolve()),
    );
    await worker.start();
    await ended;
    await worker.stop();
    expect(runSpan(result.id)).toMatchObject({
      traceId: request.traceId,
      parentSpanId: enqueue?.spanId,
      links: [{ spanId: enqueue?.spanId }],
    });
  } finally {
    await parented.close();
  }
});
