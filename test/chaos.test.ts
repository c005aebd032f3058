import { describe, expect, it } from "vitest";
import { type Fault, soak } from "../bench/chaos/soak.js";

// SIGKILL a worker, cut a worker's connections through its TCP proxy (no FIN/RST), restart
// Postgres. Set HOLDFAST_CHAOS_FAULTS to choose others.
const faults = (process.env.HOLDFAST_CHAOS_FAULTS ?? "kill,partition,restart").split(
  ",",
) as Fault[];

describe("chaos soak (short)", () => {
  it(`4 workers under ${faults.join(" + ")} faults: no overlap per key, every task ends exactly once, none stuck`, async () => {
    const report = await soak({
      durationMs: 30_000,
      workers: 4,
      concurrency: 3,
      faults,
      faultEveryMs: 4_000,
      drainTimeoutMs: 60_000,
    });
    expect(report.violations).toEqual([]);
    // The soak did something worth checking.
    expect(report.tasks).toBeGreaterThan(100);
    expect(report.succeeded).toBeGreaterThan(80);
    expect(report.deadLettered).toBeGreaterThan(0);
    expect(Object.values(report.faults).reduce((a, b) => a + b, 0)).toBeGreaterThan(2);
  }, 150_000);
});
