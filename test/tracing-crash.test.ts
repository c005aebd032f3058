import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { context, trace } from "@opentelemetry/api";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Holdfast } from "../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";
import { collectJsonLines, type JsonLines } from "./support/json-lines.js";
import { registerOtel, type SpanJson, spanJson } from "./support/otel.js";

interface Line {
  event: string;
  worker: string;
  id?: number;
  attempt?: number;
  span?: SpanJson;
}

interface Child extends JsonLines<Line> {
  name: string;
  child: ChildProcess;
  kill(): Promise<void>;
}

const fixture = fileURLToPath(new URL("./fixtures/traced-worker.ts", import.meta.url));
let db: TestDatabase;
const children: Child[] = [];

async function start(url: string, name: string): Promise<Child> {
  const child = spawn(process.execPath, ["--import", "tsx", fixture], {
    env: { ...process.env, DATABASE_URL: url, HF_NAME: name },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const c: Child = {
    name,
    child,
    ...collectJsonLines<Line>(child, `traced worker ${name}`),
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      await exited;
    },
  };
  children.push(c);
  await c.waitFor((l) => l.event === "ready", 120_000);
  return c;
}

const exporter = registerOtel();

beforeAll(async () => {
  db = await freshDatabase();
});
afterAll(async () => {
  await Promise.all(children.map((c) => c.kill()));
  await db?.drop();
});

it("a task taken over after SIGKILL shows two attempt spans, on two workers, linked to its one enqueue span", async () => {
  const [a, b] = await Promise.all([start(db.url, "a"), start(db.url, "b")]);
  const hf = new Holdfast({ pool: db.pool, logger: silent });
  // The producer: a request span around the enqueue, in this process.
  const request = trace.getTracer("test").startSpan("POST /dreams");
  const { id } = await context.with(trace.setSpan(context.active(), request), () =>
    hf.enqueue("job", { key: "dream:ws:alice", payload: { ms: 60_000, thenMs: 10 } }),
  );
  request.end();
  const enqueue = exporter
    .getFinishedSpans()
    .map((s) => spanJson(s))
    .find((s) => s.name === "holdfast.enqueue job");
  expect(enqueue).toMatchObject({ kind: 3, parentSpanId: request.spanContext().spanId });

  const first = await Promise.race(
    [a, b].map((c) => c.waitFor((l) => l.event === "start" && l.id === id)),
  );
  const victim = first.worker === "a" ? a : b;
  const survivor = victim === a ? b : a;
  await victim.kill();
  // Attempt 2 is short: the survivor's run ends, so its span is exported.
  const second = await survivor.waitFor(
    (l) => l.event === "span" && l.span?.name === "holdfast.run job",
    15_000,
  );

  // Attempt 1's span never ended (its process was killed): what its start reported.
  const lost = victim.lines.find(
    (l) => l.event === "span_start" && l.span?.name === "holdfast.run job",
  )?.span;
  const won = second.span as SpanJson;
  const link = { traceId: enqueue?.traceId, spanId: enqueue?.spanId };
  expect(lost).toMatchObject({
    kind: 4,
    links: [link],
    attributes: {
      "holdfast.attempt": 1,
      "holdfast.task.id": id,
      "holdfast.worker": victim.name,
      "messaging.message.id": String(id),
    },
  });
  expect(won).toMatchObject({
    kind: 4,
    links: [link],
    attributes: {
      "holdfast.attempt": 2,
      "holdfast.task.id": id,
      "holdfast.worker": survivor.name,
      "holdfast.outcome": "succeeded",
      "messaging.system": "holdfast",
      "messaging.operation.type": "process",
      "messaging.destination.name": "job",
    },
    status: { code: 1 },
  });
  expect(won.attributes["holdfast.fence"]).toBeGreaterThan(
    lost?.attributes["holdfast.fence"] as number,
  );
  // The handler's own span nests under its run's.
  const work = await survivor.waitFor((l) => l.event === "span" && l.span?.name === "handler work");
  expect(work.span).toMatchObject({ traceId: won.traceId, parentSpanId: won.spanId });
  await hf.close();
});
