import type pg from "pg";
import type { Violation } from "./check.js";

export interface TickReport {
  /** Ticks due between the first one and the end of the checked window. */
  expected: number;
  enqueued: number;
  skipped: number;
  duplicated: number;
  /** How long after its time each tick was enqueued (its task's created_at - its tick). */
  lateP50Ms: number | null;
  lateP99Ms: number | null;
  lateMaxMs: number | null;
}

const pct = (sorted: number[], p: number): number | null =>
  sorted.length === 0
    ? null
    : (sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? null);

/**
 * A per-second schedule's ticks on `key`, from its first tick to `until` (exclusive): each must
 * have been enqueued exactly once. No catch-up rule applies: ticks missed by at most a minute
 * (a leader change, a Postgres restart) are all enqueued, and the soak's faults are shorter.
 */
export async function checkTicks(
  pool: pg.Pool,
  key: string,
  until: Date,
): Promise<{ report: TickReport; violations: Violation[] }> {
  const { rows } = await pool.query<{ tick: Date; n: number; late_ms: number }>(
    `select place_at as tick, count(*)::int as n,
       min(extract(epoch from created_at - place_at) * 1000)::float8 as late_ms
     from chaos_tasks where key = $1 and place_at < $2
     group by place_at order by place_at`,
    [key, until],
  );
  const violations: Violation[] = [];
  let skipped = 0;
  let duplicated = 0;
  const first = rows[0]?.tick.getTime();
  const expected = first === undefined ? 0 : Math.ceil((until.getTime() - first) / 1000);
  for (const [i, r] of rows.entries()) {
    if (r.n > 1) {
      duplicated += r.n - 1;
      violations.push({
        kind: "tick-duplicated",
        detail: `tick ${r.tick.toISOString()} enqueued ${r.n} times`,
      });
    }
    const prev = rows[i - 1]?.tick.getTime();
    const gap = prev === undefined ? 0 : (r.tick.getTime() - prev) / 1000 - 1;
    if (gap > 0) {
      skipped += gap;
      violations.push({
        kind: "tick-skipped",
        detail: `${gap} tick(s) between ${new Date(prev ?? 0).toISOString()} and ${r.tick.toISOString()}`,
      });
    }
  }
  const last = rows.at(-1)?.tick.getTime();
  if (last !== undefined && until.getTime() - last > 1000) {
    const gap = Math.ceil((until.getTime() - last) / 1000) - 1;
    skipped += gap;
    violations.push({
      kind: "tick-skipped",
      detail: `${gap} tick(s) after ${new Date(last).toISOString()}`,
    });
  }
  const late = rows.map((r) => r.late_ms).sort((a, b) => a - b);
  return {
    report: {
      expected,
      enqueued: rows.length,
      skipped,
      duplicated,
      lateP50Ms: pct(late, 50),
      lateP99Ms: pct(late, 99),
      lateMaxMs: late.at(-1) ?? null,
    },
    violations,
  };
}
