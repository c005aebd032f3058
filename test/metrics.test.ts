import { expect, it } from "vitest";
import type { Worker } from "../src/index.js";
import { useHoldfast } from "./support/db.js";

const t = useHoldfast();

/** The value of one sample in the Prometheus text output (0 when absent). */
async function sample(name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await t.hf.metrics().text();
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const m = /^([a-z_]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = (m[2] ?? "").split(",").filter(Boolean);
    if (want.every((w) => have.includes(w)) && have.length === want.length) return Number(m[3]);
  }
  return 0;
}

const ended = (w: Worker, id: number) =>
  new Promise<string>((resolve) =>
    w.on("task:end", (t, info) => {
      if (t.id === id) resolve(info.outcome);
    }),
  );

it("counters, histograms and queue gauges move as tasks run", async () => {
  const metrics = t.hf.metrics(); // before the worker exists: it is observed when created
  let release: () => void = () => {};
  const gate = new Promise<void>((r) => {
    release = r;
  });
  const w = t.hf.worker({
    name: "m",
    concurrency: 2,
    handlers: {
      ok: async () => {},
      slow: async () => await gate,
      bad: { handler: async () => Promise.reject(new Error("boom")), maxAttempts: 1 },
    },
  });
  await w.start();
  expect(metrics.contentType).toMatch(/text\/plain/);

  const a = await t.hf.enqueue("ok", { key: "k1" });
  await ended(w, a.id);
  expect(await sample("holdfast_tasks_started_total", { kind: "ok" })).toBe(1);
  expect(await sample("holdfast_tasks_succeeded_total", { kind: "ok" })).toBe(1);
  expect(await sample("holdfast_wake_latency_seconds_count", { kind: "ok" })).toBe(1);
  expect(
    await sample("holdfast_task_run_seconds_count", { kind: "ok", outcome: "succeeded" }),
  ).toBe(1);

  const b = await t.hf.enqueue("bad", { key: "k2" });
  expect(await ended(w, b.id)).toBe("failed");
  expect(await sample("holdfast_tasks_failed_total", { kind: "bad" })).toBe(1);
  expect(await sample("holdfast_tasks_dead_lettered_total", { kind: "bad" })).toBe(1);
  expect(await sample("holdfast_queue_tasks", { kind: "bad", state: "dead_lettered" })).toBe(1);

  const started = new Promise<void>((r) => w.once("task:start", () => r()));
  const c = await t.hf.enqueue("slow", { key: "k3" });
  await started;
  expect(await sample("holdfast_tasks_running", { kind: "slow" })).toBe(1);
  expect(await sample("holdfast_queue_tasks", { kind: "slow", state: "running" })).toBe(1);
  await t.hf.enqueue("slow", { key: "k4", runAt: new Date(Date.now() + 3_600_000) });
  expect(await sample("holdfast_queue_tasks", { kind: "slow", state: "delayed" })).toBe(1);
  const done = ended(w, c.id);
  release();
  await done;
  expect(await sample("holdfast_tasks_running", { kind: "slow" })).toBe(0);
  expect(await sample("holdfast_queue_tasks", { kind: "slow", state: "running" })).toBe(0);
  expect(await sample("holdfast_tasks_succeeded_total", { kind: "slow" })).toBe(1);
  await w.stop();
});

it("a terminated lock session counts a lock loss and a takeover", async () => {
  let started: (id: number) => void = () => {};
  const running = new Promise<number>((r) => {
    started = r;
  });
  const handler = async (task: { id: number }, ctx: { signal: AbortSignal }) => {
    started(task.id);
    await new Promise((_, reject) =>
      ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason)),
    );
  };
  // Two workers: one loses its session mid-task, the other's sweeper requeues the task.
  const a = t.hf.worker({
    name: "victim",
    handlers: { hang: handler },
    sweepIntervalMs: 50,
    shutdownTimeoutMs: 500,
  });
  await a.start();
  const { id } = await t.hf.enqueue("hang", { key: "k5" });
  expect(await running).toBe(id);
  const b = t.hf.worker({
    name: "other",
    handlers: { other: async () => {} },
    sweepIntervalMs: 50,
  });
  await b.start();
  const before = await sample("holdfast_takeovers_total");
  const takeover = new Promise<void>((r) => {
    a.once("takeover", () => r());
    b.once("takeover", () => r());
  });
  await t.db.pool.query(
    "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'holdfast:lock:victim'",
  );
  await takeover;
  expect(await sample("holdfast_lock_losses_total")).toBe(1);
  expect(await sample("holdfast_takeovers_total")).toBe(before + 1);
  expect(await sample("holdfast_tasks_lost_total", { kind: "hang", reason: "lock_lost" })).toBe(1);
  await a.stop();
  await b.stop();
});
