// A running task's checkpoint is visible: inspect (table and --json), the dashboard (running
// tasks and the task page) and the metrics show its progress, note and age.
import { expect, it } from "vitest";
import { startDashboard } from "../src/dashboard/server.js";
import type { Task } from "../src/index.js";
import { formatSnapshot } from "../src/inspect/format.js";
import { takeSnapshot } from "../src/inspect/snapshot.js";
import { HoldfastMetrics } from "../src/metrics.js";
import { gate } from "./lock-loss/support.js";
import { silent, useHoldfast } from "./support/db.js";
import { assertInspectShape } from "./support/inspect-schema.js";
import { until } from "./support/wait.js";

const t = useHoldfast();

it("inspect, the dashboard and the metrics show a running task's progress, note and checkpoint age", async () => {
  const release = gate<void>();
  const checkpointed = gate<void>();
  const w = t.hf.worker({
    concurrency: 2,
    handlers: {
      dream: async (_task: Task, ctx) => {
        await ctx.checkpoint({ batch: 3, progress: 0.375, note: "batch 3 of 8" });
        checkpointed.open();
        await release.promise;
      },
      stuck: async () => {
        await release.promise; // never checkpoints
      },
    },
  });
  const metrics = new HoldfastMetrics(t.db.pool);
  metrics.observe(w);
  await w.start();
  try {
    await shown(metrics, checkpointed.promise);
  } finally {
    release.open();
    await w.stop();
  }
});

async function shown(metrics: HoldfastMetrics, checkpointed: Promise<void>): Promise<void> {
  const { id } = await t.hf.enqueue("dream", { key: "dream:ws:dana:dana" });
  const { id: stuckId } = await t.hf.enqueue("stuck", { key: "stuck:1" });
  await checkpointed;
  // Let the checkpoint age a little, so its age is visibly positive.
  await until(async () => {
    const c = await t.db.pool.connect();
    try {
      const s = await takeSnapshot(c);
      const h = s.holders.find((x) => x.taskId === id);
      return (h?.checkpointAgeMs ?? 0) >= 50 && s.holders.length === 2 ? true : undefined;
    } finally {
      c.release();
    }
  });

  const c = await t.db.pool.connect();
  const snap = await takeSnapshot(c).finally(() => c.release());
  assertInspectShape(JSON.parse(JSON.stringify(snap)));
  const holder = snap.holders.find((h) => h.taskId === id);
  expect(holder).toMatchObject({
    progress: 0.375,
    note: "batch 3 of 8",
    checkpointedThisRun: true,
  });
  expect(holder?.checkpointAgeMs).toBeGreaterThanOrEqual(50);
  const stuck = snap.holders.find((h) => h.taskId === stuckId);
  expect(stuck).toMatchObject({ progress: null, note: null, checkpointAgeMs: null });
  const table = formatSnapshot(snap);
  const lines = table.split("\n");
  const detail = lines[lines.findIndex((l) => l.includes("dream:ws:dana:dana")) + 1];
  expect(detail).toMatch(/^ +38% checkpoint \d+ms ago "batch 3 of 8" {2}fence /);
  const stuckDetail = lines[lines.findIndex((l) => l.includes("stuck:1")) + 1];
  expect(stuckDetail).toMatch(/^ +fence /);
  expect(Math.max(...table.split("\n").map((l) => l.length))).toBeLessThanOrEqual(80);

  const text = await metrics.text();
  expect(text).toContain(`holdfast_task_progress{kind="dream",task="${id}"} 0.375`);
  expect(text).not.toContain(`task="${stuckId}"`);
  // The run that never checkpointed counts from its start.
  const age = (kind: string) =>
    Number(
      new RegExp(`holdfast_running_checkpoint_age_seconds\\{kind="${kind}"\\} ([0-9.e-]+)`).exec(
        text,
      )?.[1],
    );
  expect(age("dream")).toBeGreaterThan(0);
  expect(age("stuck")).toBeGreaterThan(0);

  const dash = await startDashboard({ hf: t.hf, port: 0, logger: silent });
  try {
    const overview = await (await fetch(dash.url)).text();
    const runningRow = overview.split("<tr").find((r) => r.includes(`data-task="${id}"`));
    expect(runningRow).toContain("38%");
    expect(runningRow).toContain('title="batch 3 of 8"');
    const page = await (await fetch(`${dash.url}tasks/${id}`)).text();
    expect(page).toContain('<section id="checkpoint">');
    expect(page).toContain("batch 3 of 8");
    expect(page).toContain("by the running attempt");
    const api = (await (await fetch(`${dash.url}api/tasks/${id}`)).json()) as {
      task: { checkpoint: { state: unknown } | null };
    };
    expect(api.task.checkpoint?.state).toEqual({
      batch: 3,
      progress: 0.375,
      note: "batch 3 of 8",
    });
  } finally {
    await dash.close();
  }
}
