// graphile-worker's and pg-boss's part of the schedules bench (bench/schedules.ts): how each
// one's database is set up with its finest schedule, and how its jobs are read back.
import { Logger, runMigrations } from "graphile-worker";
import { PgBoss } from "pg-boss";
import { type Job, type Peer, query, tickJob } from "../schedule-systems.js";

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
