import type { Cron } from "croner";
import { describe, expect, it } from "vitest";
import {
  catchUpWindowMs,
  parseCron,
  planTicks,
  tickAfter,
  ticksBetween,
  upcomingTick,
} from "../src/schedules.js";

// The boundary arithmetic of schedules (src/schedules.ts): a tick at exactly the leader's `now`
// is due now, and is in exactly one plan. croner's own lookups are exclusive at both ends, so a
// leader whose timer fired at a tick's exact millisecond used to find it in neither the due
// ticks nor the next one: a per-second schedule skipped ticks, a nightly one a whole day.

const at = (iso: string) => new Date(iso);
const iso = (d: Date | null) => d?.toISOString() ?? null;
const plus = (d: Date, ms: number) => new Date(d.getTime() + ms);

describe("a tick at the leader's exact millisecond", () => {
  const everySecond = parseCron("* * * * * *", null);
  const T = at("2026-12-02T08:00:00.000Z");

  it("is due at T, not a millisecond before, and is not the next tick after T", () => {
    const covered = plus(T, -1000);
    const before = planTicks(everySecond, covered, 1, plus(T, -1));
    expect(before.ticks.map(iso)).toEqual([]);
    expect(iso(before.next)).toBe(iso(T));

    const exact = planTicks(everySecond, covered, 1, T);
    expect(exact.ticks.map(iso)).toEqual([iso(T)]);
    expect(iso(exact.covered)).toBe(iso(T));
    expect(iso(exact.next)).toBe(iso(plus(T, 1000)));

    const after = planTicks(everySecond, covered, 1, plus(T, 1));
    expect(after.ticks.map(iso)).toEqual([iso(T)]);
    expect(iso(after.next)).toBe(iso(plus(T, 1000)));
  });

  it("a nightly tick in New York at exactly 08:00:00.000Z is enqueued that day, not skipped", () => {
    const nightly = parseCron("0 3 * * *", "America/New_York");
    const plan = planTicks(nightly, at("2026-12-01T08:00:00.000Z"), 1, T);
    expect(plan.ticks.map(iso)).toEqual([iso(T)]);
    expect(iso(plan.next)).toBe("2026-12-03T08:00:00.000Z");
  });

  it("the upcoming tick shown to users includes one due at exactly now", () => {
    expect(iso(upcomingTick(everySecond, plus(T, -5000), T))).toBe(iso(T));
    expect(iso(upcomingTick(everySecond, T, T))).toBe(iso(plus(T, 1000)));
  });
});

/** Runs a leader that plans at each of `times` (firing what each plan says) and returns every
 *  tick it enqueued, in order. */
function fireAt(cron: Cron, start: Date, times: Date[], backfill = 1): Date[] {
  let covered = start;
  const fired: Date[] = [];
  for (const now of times) {
    const plan = planTicks(cron, covered, backfill, now);
    fired.push(...plan.ticks);
    covered = plan.covered;
    // The next plan is never later than the next tick it announced (the leader's timer).
    if (plan.next) expect(plan.next.getTime()).toBeGreaterThan(now.getTime());
  }
  return fired;
}

describe("every tick exactly once", () => {
  it("with timers that fire at, a millisecond before and a millisecond after each tick", () => {
    const cron = parseCron("* * * * * *", null);
    const start = at("2026-12-02T07:59:59.500Z");
    const times: Date[] = [];
    for (let s = 0; s < 30; s++) {
      const tick = at("2026-12-02T08:00:00.000Z").getTime() + s * 1000;
      times.push(new Date(tick + (s % 3 === 0 ? 0 : s % 3 === 1 ? -1 : 1)));
    }
    times.push(at("2026-12-02T08:00:31.000Z"));
    const fired = fireAt(cron, start, times).map((d) => d.getTime());
    expect(new Set(fired).size).toBe(fired.length);
    const expected = Array.from(
      { length: 32 },
      (_, i) => at("2026-12-02T08:00:00.000Z").getTime() + i * 1000,
    );
    expect(fired).toEqual(expected);
  });

  it("across a leader change that took 3 s: the missed ticks are enqueued late, none skipped, with the default backfill", () => {
    const cron = parseCron("* * * * * *", null);
    const start = at("2026-12-02T08:00:00.000Z");
    // The leader fires at :01 and :02 and dies; its successor plans at :05.250.
    const fired = fireAt(cron, start, [
      at("2026-12-02T08:00:01.000Z"),
      at("2026-12-02T08:00:02.000Z"),
      at("2026-12-02T08:00:05.250Z"),
    ]);
    expect(fired.map(iso)).toEqual([1, 2, 3, 4, 5].map((s) => `2026-12-02T08:00:0${s}.000Z`));
  });

  it("after longer than the catch-up window without any worker, only the window's ticks (or backfill) are caught up", () => {
    const minutely = parseCron("* * * * *", null);
    const now = at("2026-12-02T08:10:30.000Z");
    const covered = plus(now, -10.5 * 60_000);
    expect(planTicks(minutely, covered, 1, now).ticks.map(iso)).toEqual([
      "2026-12-02T08:10:00.000Z",
    ]);
    expect(planTicks(minutely, covered, 3, now).ticks.map(iso)).toEqual([
      "2026-12-02T08:08:00.000Z",
      "2026-12-02T08:09:00.000Z",
      "2026-12-02T08:10:00.000Z",
    ]);
    const everySecond = parseCron("* * * * * *", null);
    const ticks = planTicks(everySecond, plus(now, -3_600_000), 1, now).ticks;
    expect(ticks.length).toBe(catchUpWindowMs / 1000);
    expect(iso(ticks.at(-1) ?? null)).toBe(iso(now));
  });
});

describe("daylight saving time (America/New_York, 2026)", () => {
  it("spring forward: 02:30 does not exist on March 8; the tick fires once, at 03:00 EDT (07:00Z)", () => {
    const cron = parseCron("30 2 * * *", "America/New_York");
    const ticks = ticksBetween(
      cron,
      at("2026-03-07T00:00:00Z"),
      at("2026-03-10T00:00:00Z"),
      1000,
    ).map(iso);
    expect(ticks).toEqual([
      "2026-03-07T07:30:00.000Z", // 02:30 EST
      "2026-03-08T07:00:00.000Z", // 03:00 EDT: the first instant after the gap
      "2026-03-09T06:30:00.000Z", // 02:30 EDT
    ]);
  });

  it("fall back: 01:30 happens twice on November 1; the tick fires once, at the first (EDT)", () => {
    const cron = parseCron("30 1 * * *", "America/New_York");
    const day = { from: at("2026-11-01T04:00:00Z"), to: at("2026-11-01T12:00:00Z") };
    expect(ticksBetween(cron, day.from, day.to, 1000).map(iso)).toEqual([
      "2026-11-01T05:30:00.000Z",
    ]);
    // A leader planning at each hour of that night fires it once, too.
    const hours = Array.from({ length: 9 }, (_, i) => plus(day.from, i * 3_600_000));
    expect(fireAt(cron, day.from, hours).map(iso)).toEqual(["2026-11-01T05:30:00.000Z"]);
  });
});

describe("ticksBetween", () => {
  it("walks backward for a long span and returns the same ticks as the forward walk", () => {
    const cron = parseCron("*/7 * * * * *", null);
    const after = at("2026-12-02T08:00:00.000Z");
    const until = at("2026-12-02T08:10:00.000Z");
    const all = ticksBetween(cron, after, until, 10_000);
    expect(ticksBetween(cron, after, until, 5).map(iso)).toEqual(all.slice(-5).map(iso));
    expect(iso(tickAfter(cron, all.at(-1) ?? after))).not.toBe(iso(all.at(-1) ?? null));
  });
});
