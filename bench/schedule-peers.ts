// The systems of the schedules bench (bench/schedules.ts): how each one's database is set up
// with its finest schedule, and how its jobs are read back and filed under their ticks.
import { Logger, runMigrations } from "graphile-worker";
import pg from "pg";
import { PgBoss } from "pg-boss";
import { pino } from "pino";
import { Holdfast } from "../src/index.js";
import { quietPool } from "./db.js";
import type { Handled } from "./schedule-worker.js";

export type SystemName = "holdfast" | "graphile" | "pgboss";

/** The queue, kind and task name of the scheduled job (as in bench/schedule-worker.ts). */
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

async function query<R extends pg.QueryResultRow>(url: string, text: string): Promise<R[]> {
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

export const graphilePeer: Peer = {
  system: "graphile",
  label: "graphile-worker",
  precision: "1 min",
  cron: "* * * * *",
  stepMs: 60_000,
  config: "crontab, defaults (no backfill)",
  async setup(url) {
    await runMigrations({ connectionString: url, logger: new Logger(() => () => {}) });
  },
  async jobs(url, handled) {
    // A completed job is deleted: those come from the handlers' lines, the rest from the table.
    const rows = await query<{ id: string; ts: string; created: Date }>(
      url,
      `select j.id::text, j.payload->'_cron'->>'ts' as ts, j.created_at as created
       from graphile_worker._private_jobs j
       join graphile_worker._private_tasks t on t.id = j.task_id
       where t.identifier = '${tickJob}'`,
    );
    const byId = new Map<string, Job>();
    for (const h of handled) {
      if (h.tick !== undefined && h.created !== undefined) {
        byId.set(h.id, { id: h.id, tick: h.tick, created: h.created });
      }
    }
    for (const r of rows) {
      byId.set(r.id, { id: r.id, tick: Date.parse(r.ts), created: r.created.getTime() });
    }
    return [...byId.values()];
  },
};

export const pgbossPeer: Peer = {
  system: "pgboss",
  label: "pg-boss",
  precision: "1 min",
  cron: "* * * * *",
  stepMs: 60_000,
  config: "schedule(), cronMonitorIntervalSeconds 1, cronWorkerIntervalSeconds 1, notify queue",
  async setup(url) {
    const boss = new PgBoss({ connectionString: url, max: 2, supervise: false, schedule: false });
    boss.on("error", () => {});
    await boss.start();
    try {
      await boss.createQueue(tickJob, { notify: true });
      await boss.schedule(tickJob, this.cron);
    } finally {
      await boss.stop({ graceful: false });
    }
  },
  async jobs(url) {
    // A cron pass files each occurrence as a job of the internal send-it queue under its minute
    // (data.slot, UTC); the send-it worker then sends the tick's job. A job is filed under the
    // slot of the send-it job that was running when it was created, or else under its minute.
    const rows = await query<{ id: string; created: Date; slot: string | null }>(
      url,
      `select j.id::text, j.created_on as created,
         (select s.data->>'slot' from pgboss.job s
          where s.name = '__pgboss__send-it' and s.data->>'name' = '${tickJob}'
            and j.created_on between s.started_on and coalesce(s.completed_on, 'infinity')
          order by s.started_on desc limit 1) as slot
       from pgboss.job j where j.name = '${tickJob}'`,
    );
    return rows.map((r) => {
      const created = r.created.getTime();
      const tick = r.slot
        ? Date.parse(`${r.slot.replace(" ", "T")}Z`)
        : created - (created % 60_000);
      return { id: r.id, tick, created };
    });
  },
};
