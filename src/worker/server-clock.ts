import type { Logger } from "pino";

/** Runs one statement and returns its rows (a LockSession, the LISTEN session's pg.Client). */
export type ClockQuery = (text: string) => Promise<Array<{ ms: number }>>;

/** The server's clock, in ms since the epoch (float8: sub-millisecond). */
export const serverClockSql = "select (extract(epoch from clock_timestamp()) * 1000)::float8 as ms";

/** Past this offset between the worker's wall clock and the server's, the worker warns. */
export const clockSkewWarnMs = 1_000;
/** A measurement older than this is refreshed (by the LISTEN session's ping, see Listener):
 *  the monotonic clock this extrapolates with drifts by a few ppm from the server's. */
export const clockResyncMs = 60_000;

interface Sample {
  /** The server's clock at `mono`. */
  serverMs: number;
  /** performance.now() at the middle of the round trip. */
  mono: number;
  rttMs: number;
}

/**
 * The database's clock, as this process sees it. Every deadline the worker waits for is a
 * time the server wrote (a run_at, a debounce's due time, a cron tick, a quiet deadline), so
 * it is compared with this, never with Date.now(): a host whose wall clock is off would
 * otherwise wake late (behind) or early (ahead) by its skew.
 *
 * One sample (a round trip reading clock_timestamp()) at each session start, then one per
 * clockResyncMs. Between samples the time is extrapolated with the monotonic clock, so a
 * local wall-clock step (NTP, a VM resume) changes nothing here; only offsetMs shows it.
 * Error: half the sample's round trip. Unmeasured, it falls back to the local wall clock.
 */
export class ServerClock {
  private sample: Sample | undefined;
  /** The offset last logged as skewed (null: within the threshold), so each change is logged once. */
  private warned: number | null = null;

  constructor(
    private readonly logger?: Logger,
    private readonly measured: (offsetMs: number, rttMs: number) => void = () => {},
  ) {}

  /** The server's clock now (ms epoch). */
  now(): number {
    const s = this.sample;
    return s ? s.serverMs + (performance.now() - s.mono) : Date.now();
  }

  /** Milliseconds from now until the server's clock reads `at` (negative: past). */
  until(at: Date | number): number {
    return (typeof at === "number" ? at : at.getTime()) - this.now();
  }

  /** A server time (ms epoch) on the local wall clock, for a local deadline. */
  toLocal(serverMs: number): number {
    return serverMs - this.offset();
  }

  /** Server minus local wall clock now (ms; positive: this host is behind); null before the
   *  first measurement. */
  get offsetMs(): number | null {
    return this.sample ? this.offset() : null;
  }

  /** Whether the last measurement is older than clockResyncMs (or there is none). */
  get stale(): boolean {
    return !this.sample || performance.now() - this.sample.mono > clockResyncMs;
  }

  /**
   * Reads the server's clock `samples` times and keeps the tightest round trip. A periodic
   * resample on a shared session may queue behind another statement: one whose round trip is
   * much longer than the current sample's is discarded unless that sample is stale.
   */
  async measure(query: ClockQuery, samples = 1): Promise<void> {
    let best: Sample | undefined;
    for (let i = 0; i < samples; i++) {
      const t0 = performance.now();
      const [row] = await query(serverClockSql);
      const t1 = performance.now();
      if (!row) continue;
      const s = { serverMs: Number(row.ms), mono: (t0 + t1) / 2, rttMs: t1 - t0 };
      if (!best || s.rttMs < best.rttMs) best = s;
    }
    if (!best) return;
    const current = this.sample;
    if (current && !this.stale && best.rttMs > 4 * current.rttMs + 10) return;
    this.sample = best;
    this.report(best.rttMs);
  }

  private offset(): number {
    return this.now() - Date.now();
  }

  private report(rttMs: number): void {
    const offsetMs = Math.round(this.offset());
    this.measured(offsetMs, rttMs);
    const skewed = Math.abs(offsetMs) > clockSkewWarnMs;
    if (skewed && (this.warned === null || Math.abs(offsetMs - this.warned) > clockSkewWarnMs)) {
      this.warned = offsetMs;
      this.logger?.warn(
        { event: "clock_skew", offsetMs, rttMs: Math.round(rttMs * 10) / 10 },
        `holdfast: this host's clock is ${Math.abs(offsetMs)} ms ${offsetMs > 0 ? "behind" : "ahead of"} the database's; deadlines follow the database's clock`,
      );
    } else if (!skewed && this.warned !== null) {
      this.warned = null;
      this.logger?.info(
        { event: "clock_skew_cleared", offsetMs },
        "holdfast: this host's clock agrees with the database's again",
      );
    }
  }
}
