// The cost of tracing: `npx tsx bench/tracing.ts [samples]` alone, or the `tracing` section of
// bench/run.ts (`npm run bench -- --only tracing`).
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { context } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import { pino } from "pino";
import { Holdfast, type HoldfastOptions, type Task } from "../src/index.js";
import { Tracing } from "../src/tracing.js";
import type { Run } from "../src/worker/runs.js";
import { createDatabase, dropDatabase, startBenchServer } from "./db.js";
import { fmt, type Summary, summarize, table } from "./stats.js";

export interface TracingCostResult extends Summary {
  op: string;
  variant: string;
}

/**
 * hf.enqueue (one round trip, its commit) and the per-task cost of a worker draining a
 * backlog (claim, handler, completion: ms per task over rounds of `perRound` tasks), for:
 * - tracing: false (the path taken when @opentelemetry/api is not installed: no API loaded);
 * - the API installed, no tracer provider registered (the default; every hook returns at its
 *   first check);
 * - a provider registered (the SDK, every span sampled, exported to memory: the enqueue span,
 *   the task_traces row, the worker's lookup per claim, the run span with its link).
 * The variants take turns, call by call and round by round, so a changing load falls on all.
 */
export async function tracingCost(
  adminUrl: string,
  samples: number,
  rounds = 5,
  perRound = 200,
): Promise<TracingCostResult[]> {
  const url = await createDatabase(adminUrl, "tracing");
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({
    spanProcessors: [new SimpleSpanProcessor(exporter)],
  });
  const variants: Array<[string, HoldfastOptions["tracing"]]> = [
    ["tracing: false (no API)", false],
    ["no tracer registered", {}],
    ["tracer registered", { tracerProvider: provider }],
  ];
  const hfs = variants.map(
    ([, tracing]) =>
      new Holdfast({ connectionString: url, logger: pino({ level: "silent" }), tracing }),
  );
  const warmup = 20;
  const timed = async (fn: () => Promise<unknown>) => {
    const t0 = performance.now();
    await fn();
    return performance.now() - t0;
  };
  try {
    await hfs[0]?.migrate();
    for (const [i, hf] of hfs.entries()) await hf.defineKind(`t${i}`);
    const enqueue = variants.map(() => [] as number[]);
    // Each turn starts with the next variant, so none always follows the same one.
    const order = (turn: number) => hfs.map((_, k) => (k + turn) % hfs.length);
    for (let n = 0; n < samples + warmup; n++) {
      for (const i of order(n)) {
        const t = await timed(() => (hfs[i] as Holdfast).enqueue(`t${i}`, { key: `t${i}:e:${n}` }));
        if (n >= warmup) enqueue[i]?.push(t);
      }
      exporter.reset();
    }
    // The backlog above is drained by round 0 (a warm-up round, not counted).
    const perTask = variants.map(() => [] as number[]);
    for (let r = 0; r <= rounds; r++) {
      for (const i of order(r)) {
        const hf = hfs[i] as Holdfast;
        const count = r === 0 ? samples + warmup : perRound;
        if (r > 0)
          for (let k = 0; k < perRound; k++)
            await hf.enqueue(`t${i}`, { key: `t${i}:r${r}:${k % 20}` });
        const worker = hf.worker({ concurrency: 4, handlers: { [`t${i}`]: async () => {} } });
        let ended = 0;
        let t0 = 0;
        const drained = new Promise<void>((resolve) =>
          worker.on("task:end", () => {
            if (++ended === count) resolve();
          }),
        );
        // Timed from the first start: the worker's own start (sessions, clock) is not per task.
        worker.once("task:start", () => {
          t0 = performance.now();
        });
        await worker.start();
        await drained;
        const ms = performance.now() - t0;
        await worker.stop();
        if (r > 0) perTask[i]?.push(ms / count);
        exporter.reset();
      }
    }
    const hooks = await hookCost(hfs[0] as Holdfast);
    return variants
      .flatMap(([variant], i) => [
        { op: "hf.enqueue", variant, ...summarize(enqueue[i] ?? []) },
        {
          op: `worker, per task (${rounds} × ${perRound})`,
          variant,
          ...summarize(perTask[i] ?? []),
        },
      ])
      .concat(hooks);
  } finally {
    await Promise.all(hfs.map((hf) => hf.close()));
    await provider.shutdown();
    await dropDatabase(adminUrl, url);
  }
}

/**
 * The worker's three tracing hooks for one task (claimed, run, finished) without a database,
 * in µs per task, for the variants without a tracer: what the hot path pays for tracing when
 * nothing is recorded. Batches of 20,000 tasks; a handler that returns at once.
 */
async function hookCost(hf: Holdfast): Promise<TracingCostResult[]> {
  const logger = pino({ level: "silent" });
  const task = { id: 1, kind: "t", key: "k", attempt: 1, fence: 1 } as Task;
  const variants: Array<[string, Tracing | undefined]> = [
    ["the loop alone (no hooks)", undefined],
    ["tracing: false (no API)", new Tracing(false)],
    ["no tracer registered", new Tracing({})],
  ];
  const out: TracingCostResult[] = [];
  for (const [variant, tracing] of variants) {
    await tracing?.enqueueSpan("t", 1); // waits for the API to load
    const batches: number[] = [];
    for (let b = 0; b < 12; b++) {
      const n = 20_000;
      const t0 = performance.now();
      for (let j = 0; j < n; j++) {
        const run = { task, tasks: [task], controller: new AbortController() } as unknown as Run;
        if (!tracing) {
          await (async () => {})();
          continue;
        }
        tracing.claimed(hf.pool, [[task]], logger);
        await tracing.run(run, "w", async () => {});
        tracing.finished(run, "succeeded");
      }
      if (b >= 2) batches.push(((performance.now() - t0) * 1000) / n);
    }
    out.push({ op: "worker hooks, no database (µs per task)", variant, ...summarize(batches) });
  }
  return out;
}

export function renderTracingCost(rows: TracingCostResult[]): string {
  return table([
    ["call", "variant", "n", "p50", "p95", "p99"],
    ...rows.map((c) => [c.op, c.variant, String(c.n), fmt(c.p50), fmt(c.p95), fmt(c.p99)]),
  ]);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const server = await startBenchServer();
  try {
    const rows = await tracingCost(server.url, Number(process.argv[2] ?? 300));
    process.stdout.write(`Cost of tracing (ms)\n${renderTracingCost(rows)}\n`);
  } finally {
    await server.stop();
  }
}
