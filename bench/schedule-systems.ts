// The systems of the schedules bench (bench/schedules.ts): how each one's database is set up
// with its finest schedule, and how its jobs are read back and filed under their ticks.
// holdfast's is here; graphile-worker's and pg-boss's are in bench/peers/schedule.ts (their
// packages are installed there, on first use).
import pg from "pg";
import { pino } from "pino";
import { Holdfast } from "../src/index.js";
import { quietPool } from "./db.js";

export type SystemName = "holdfast" | "graphile" | "pgboss";

/** The queue, kind and task name of the scheduled job (as in bench/peers/schedule-worker.ts). */
export const tickJob = "tick";

export interface Job {
  id: string;
  tick: number;
  created: number;
}

/** A system's part of the run: how to set its database up, and how to read its jobs back. */
export interface Peer {
  system: SystemName;
  label: string;
  precision: string;
  cron: string;
  stepMs: number;
  setup(url: string): Promise<void>;
  /** Every job of the schedule the database still holds (with `handled`: the ones it deleted). */
  jobs(url: string, handled: Handled[]): Promise<Job[]>;
  config: string;
}

export async function query<R extends pg.QueryResultRow>(url: string, text: string): Promise<R[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<R>(text)).rows;
  } finally {
    await c.end();
  }
}

export const holdfastPeer: Peer = {
  system: "holdfast",
  label: "holdfast",
  precision: "1 s",
  cron: "* * * * * *",
  stepMs: 1_000,
  config: "defaults, backfill 1",
  async setup(url) {
    const pool = quietPool(new pg.Pool({ connectionString: url, max: 2 }));
    const hf = new Holdfast({ pool, logger: pino({ level: "silent" }) });
    try {
      await hf.migrate();
      await hf.defineKind(tickJob);
      await hf.schedule(tickJob, { cron: this.cron, kind: tickJob, key: tickJob });
    } finally {
      await hf.close();
      await pool.end();
    }
  },
  async jobs(url) {
    const rows = await query<{ id: string; tick: Date; created: Date }>(
      url,
      `select id::text, place_at as tick, created_at as created
       from holdfast.tasks where kind = '${tickJob}'`,
    );
    return rows.map((r) => ({ id: r.id, tick: r.tick.getTime(), created: r.created.getTime() }));
  },
};

/** A `handled` line (the parent imports this type only: importing the module runs it). */
export interface Handled {
  event: "handled";
  worker: string;
  /** The system's job or task id. */
  id: string;
  /** The tick, where the job carries it (graphile-worker's `_cron.ts`), ms epoch. */
  tick?: number;
  /** When the job was created (graphile-worker only: it deletes completed jobs), ms epoch. */
  created?: number;
  /** When the handler started, ms epoch. */
  started: number;
}
