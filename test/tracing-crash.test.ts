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
  // Its handler's own span has started (the run's span started before it).
  await victim.waitFor((l) => l.event === "span_start" && l.span?.name === "handler work");
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
  // The trace as docs/tracing.md shows it.
  const lostWork = victim.lines.find(
    (l) => l.event === "span_start" && l.span?.name === "handler work",
  )?.span;
  const requestSpan = exporter.getFinishedSpans().find((s) => s.name === "POST /dreams");
  if (!requestSpan) throw new Error("the request span was not exported");
  console.log(
    dump([
      ["request", spanJson(requestSpan)],
      ["enqueue", enqueue as SpanJson],
      [`worker ${victim.name}, SIGKILLed`, lost as SpanJson],
      ["", lostWork as SpanJson],
      [`worker ${survivor.name}`, won],
      ["", work.span as SpanJson],
    ]),
  );
  await hf.close();
});

/** A text tree of spans: one trace per root, children indented, ids shortened. */
function dump(spans: Array<[string, SpanJson]>): string {
  const short = (id: string) => `${id.slice(0, 4)}…${id.slice(-4)}`;
  const kinds = ["INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"];
  const keep = /^(holdfast\.(attempt|fence|worker|outcome|key)|messaging\.message\.id)$/;
  const out: string[] = [];
  for (const [note, s] of spans) {
    const depth = spans.filter(([, p]) => p.spanId === s.parentSpanId).length;
    if (depth === 0) out.push(`trace ${short(s.traceId)}${note ? `   (${note})` : ""}`);
    const pad = "   ".repeat(depth + (s.parentSpanId && depth === 0 ? 1 : 0));
    const links = s.links.map((l) => ` link → ${short(l.traceId)}/${short(l.spanId)}`).join("");
    const status = s.open ? " (never ended)" : s.status.code === 1 ? " status OK" : "";
    out.push(`${pad}└─ ${s.name}  ${kinds[s.kind]} span ${short(s.spanId)}${links}${status}`);
    const attrs = Object.entries(s.attributes).filter(([k]) => keep.test(k));
    if (attrs.length > 0) out.push(`${pad}      ${attrs.map(([k, v]) => `${k}=${v}`).join(" ")}`);
  }
  return out.join("\n");
}
