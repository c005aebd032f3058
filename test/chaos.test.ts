import { describe, expect, it } from "vitest";
import { type Fault, soak } from "../bench/chaos/soak.js";

// SIGKILL a worker, cut a worker's connections through its TCP proxy (no FIN/RST), restart
// Postgres. Set HOLDFAST_CHAOS_FAULTS to choose others.
const faults = (process.env.HOLDFAST_CHAOS_FAULTS ?? "kill,partition,restart").split(
  ",",
) as Fault[];

describe("chaos soak (short)", () => {
  it(`4 workers under ${faults.join(" + ")} faults: no overlap per key, order per key kept, every task ends exactly once, none stuck, no extra session, every schedule tick once`, async () => {
    const report = await soak({
      durationMs: 30_000,
      workers: 4,
      concurrency: 3,
      faults,
      faultEveryMs: 3_000,
      drainTimeoutMs: 60_000,
    });
    expect(report.violations).toEqual([]);
    // The soak did something worth checking.
    expect(report.tasks).toBeGreaterThan(100);
    expect(report.succeeded).toBeGreaterThan(80);
    expect(report.deadLettered).toBeGreaterThan(0);
    // Faults come once per kind per round, every 1.5–4.5 s: each kind happens in 30 s.
    for (const f of faults) expect(report.faults[f], f).toBeGreaterThan(0);
    // The per-second schedule ran through the faults: its ticks are checked (violations above).
    expect(report.ticks.enqueued).toBeGreaterThan(20);
    expect(report.ticks.enqueued).toBe(report.ticks.expected);
    // Finished tasks were pruned (2 s retention) while the faults ran, and checked all the same.
    expect(report.pruned).toBeGreaterThan(0);
  }, 150_000);
});
