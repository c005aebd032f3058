import { expect, it } from "vitest";
import type { Task } from "../src/index.js";
import { useHoldfast } from "./support/db.js";

const t = useHoldfast({ job: {} });

it("ready tasks start in priority order (lower first), then enqueue order", async () => {
  const order: string[] = [];
  for (const [key, priority] of [
    ["p5", 5],
    ["p0a", 0],
    ["p10", 10],
    ["pm1", -1],
    ["p0b", 0],
  ] as const) {
    await t.hf.enqueue("job", { key, priority });
  }
  const worker = t.hf.worker({ concurrency: 1, handlers: { job: (t) => void order.push(t.key) } });
  const done = new Promise<void>((r) => worker.on("task:end", () => order.length === 5 && r()));
  await worker.start();
  await done;
  await worker.stop();
  expect(order).toEqual(["pm1", "p0a", "p0b", "p5", "p10"]);
});

it("a delayed task starts at its time, woken by a timer (no polling), even while a slot is busy", async () => {
  let releaseLong!: () => void;
  const long = new Promise<void>((r) => {
    releaseLong = r;
  });
  const startedAt = new Map<string, number>();
  const worker = t.hf.worker({
    concurrency: 2,
    rescanIntervalMs: 60_000,
    handlers: {
      job: async (task: Task) => {
        startedAt.set(task.key, Date.now());
        if (task.key === "long") await long;
      },
    },
  });
  await worker.start();
  const longStarted = new Promise<void>((r) =>
    worker.on("task:start", (t) => t.key === "long" && r()),
  );
  await t.hf.enqueue("job", { key: "long" });
  await longStarted;

  const delayMs = 1_200;
  const runAt = new Date(Date.now() + delayMs);
  const delayedStarted = new Promise<void>((r) =>
    worker.on("task:start", (t) => t.key === "delayed" && r()),
  );
  await t.hf.enqueue("job", { key: "delayed", runAt });
  await delayedStarted;
  const lateness = (startedAt.get("delayed") ?? 0) - runAt.getTime();
  console.log(`delayed task started ${lateness} ms after its runAt`);
  expect(lateness).toBeGreaterThanOrEqual(-5);
  expect(lateness).toBeLessThan(500);
  releaseLong();
  await worker.stop();
});
