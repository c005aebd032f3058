// One worker process of the schedules bench (bench/schedules.ts; here, beside the peers' packages), started with
// `node --import tsx` and SIGKILLed by the parent. It runs one system's worker on the database
// the parent set up (the schedule is declared there already) with a no-op handler for the
// scheduled job, and prints JSON lines on stdout: `ready`, `leader` (holdfast: this process was
// elected sweep leader, the one that fires ticks) and `handled` per job with the moment its
// handler started. Env: SCHED_SYSTEM (holdfast | graphile | pgboss), DATABASE_URL, SCHED_NAME.
import { Logger, run } from "graphile-worker";
import { PgBoss } from "pg-boss";
import { pino } from "pino";
import { Holdfast } from "../../src/index.js";
import { tickJob } from "../schedule-systems.js";

const system = process.env.SCHED_SYSTEM ?? "";
const url = process.env.DATABASE_URL ?? "";
const name = process.env.SCHED_NAME ?? `w${process.pid}`;

const say = (event: string, data: Record<string, unknown> = {}) =>
  process.stdout.write(`${JSON.stringify({ event, worker: name, at: Date.now(), ...data })}\n`);

async function holdfast(): Promise<void> {
  // Its own pool from the URL: this file's `pg` is bench/peers' copy, not the library's.
  const hf = new Holdfast({
    connectionString: url,
    logger: pino({ level: process.env.HF_LOG ?? "silent" }),
  });
  const worker = hf.worker({
    name,
    concurrency: 1,
    handlers: {
      [tickJob]: async (task) => {
        say("handled", { id: String(task.id), started: Date.now() });
      },
    },
  });
  worker.on("leader", () => say("leader"));
  worker.on("error", (err) => say("error", { message: String(err) }));
  await worker.start();
}

async function graphile(): Promise<void> {
  // graphile-worker defaults (its cron timer fires at each minute, LISTEN wakes the worker).
  await run({
    connectionString: url,
    concurrency: 1,
    noHandleSignals: true,
    logger: new Logger(() => () => {}),
    crontab: `* * * * * ${tickJob}`,
    taskList: {
      [tickJob]: async (payload, helpers) => {
        const cron = (payload as { _cron?: { ts: string } })._cron;
        say("handled", {
          id: helpers.job.id,
          tick: cron ? Date.parse(cron.ts) : undefined,
          created: helpers.job.created_at.getTime(),
          started: Date.now(),
        });
      },
    },
  });
}

async function pgboss(): Promise<void> {
  // Its documented minimums for schedule timeliness: a cron pass every second (claimed by one
  // instance) and the internal send-it queue polled every second; the tick queue is
  // notify-enabled (the parent created it so) and woken by LISTEN.
  const boss = new PgBoss({
    connectionString: url,
    max: 4,
    useListenNotify: true,
    cronMonitorIntervalSeconds: 1,
    cronWorkerIntervalSeconds: 1,
  });
  boss.on("error", () => {});
  await boss.start();
  await boss.work(tickJob, { pollingIntervalSeconds: 0.5 }, async (jobs) => {
    for (const j of jobs) say("handled", { id: j.id, started: Date.now() });
  });
}

const start = { holdfast, graphile, pgboss }[system];
if (!start) throw new Error(`schedule-worker: unknown SCHED_SYSTEM ${JSON.stringify(system)}`);
await start();
say("ready");
