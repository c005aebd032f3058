import pg from "pg";
import { pino } from "pino";
import { Holdfast } from "../src/index.js";
import { startWorkerProcess, type WorkerProcess } from "../test/support/processes.js";
import { createRunsTable } from "../test/support/runs.js";
import { createDatabase, dropDatabase, quietPool, sleep, until } from "./db.js";
import { round, type Summary, summarize } from "./stats.js";

export interface FleetOptions {
  /** Worker processes (one lock and one LISTEN session each). */
  processes: number;
  /** Window over which idle transactions are counted. */
  idleMs: number;
  /** SIGKILL takeovers per case (sweep leader killed; a follower killed). */
  takeovers: number;
  /** Tasks enqueued one at a time to time the claim under the fleet. */
  claims: number;
  log?: (line: string) => void;
}

export interface FleetResult {
  processes: number;
  idle: {
    seconds: number;
    transactionsPerSecond: number;
    perProcess: number;
    /** Sessions named holdfast:* (lock and LISTEN) once the pools' start-up clients closed. */
    holdfastSessions: number;
    /** Every backend on the fleet's database except the bench's own. */
    backends: number;
  };
  /** Seconds from SIGKILL to attempt 2 starting elsewhere. */
  takeoverLeader: Summary;
  takeoverFollower: Summary;
  /** Enqueue call → handler start, ms, one task at a time on the idle fleet. */
  claim: Summary;
  /** Transactions per task while claiming one at a time (every idle process is woken). */
  transactionsPerTask: number;
  missed: string[];
}

const POOL_IDLE_MS = 10_000; // pg.Pool's default idleTimeoutMillis (the fixture's pool)

/** The name of the worker holding the sweep leadership (the two-int advisory lock). */
async function leaderName(pool: pg.Pool): Promise<string | undefined> {
  const { rows } = await pool.query<{ app: string }>(
    `select a.application_name as app from pg_locks l join pg_stat_activity a on a.pid = l.pid
     where l.locktype = 'advisory' and l.classid = 1752132708 and l.objid = 1
       and l.objsubid = 2 and l.granted and l.database = (
         select oid from pg_database where datname = current_database())`,
  );
  return rows[0]?.app.replace(/^holdfast:lock:/, "");
}

async function transactions(pool: pg.Pool): Promise<number> {
  const { rows } = await pool.query<{ n: string }>(
    `select xact_commit + xact_rollback as n from pg_stat_database
     where datname = current_database()`,
  );
  return Number(rows[0]?.n ?? 0);
}

/**
 * N idle worker processes (test/fixtures/worker-process.ts, concurrency 1) on one database:
 * what they cost the server while idle, how fast a SIGKILLed task is taken over when the
 * sweep leader dies and when a follower dies, and how fast the fleet claims a new task.
 */
export async function fleet(adminUrl: string, opts: FleetOptions): Promise<FleetResult> {
  const url = await createDatabase(adminUrl, "fleet");
  const hf = new Holdfast({ connectionString: url, logger: pino({ level: "silent" }) });
  await hf.migrate();
  await hf.defineKind("job");
  const pool = quietPool(
    new pg.Pool({ connectionString: url, max: 2, application_name: "holdfast-bench" }),
  );
  await createRunsTable(pool);
  const procs: WorkerProcess[] = [];
  let spawned = 0;
  const spawn = async () => {
    const p = await startWorkerProcess(url, `f${spawned++}`);
    procs.push(p);
    return p;
  };
  const missed: string[] = [];
  const t = Date.now();
  const mark = (what: string) =>
    opts.log?.(`  fleet: ${what} (${Math.round((Date.now() - t) / 1000)} s)`);
  try {
    // A few at a time: every start-up compiles TypeScript, and the machine is shared.
    while (procs.length < opts.processes) {
      const batch = Math.min(4, opts.processes - procs.length);
      await Promise.all(Array.from({ length: batch }, spawn));
    }
    mark(`${procs.length} processes up`);
    // Backends flush their statistics lazily (up to 10 s when idle) and the fixture's pools
    // close their start-up clients after 10 s: count from a quiet fleet.
    await sleep(POOL_IDLE_MS + 2_000);
    const x0 = await transactions(pool);
    const t0 = Date.now();
    await sleep(opts.idleMs);
    const x1 = await transactions(pool);
    const seconds = (Date.now() - t0) / 1000;
    const { rows: conns } = await pool.query<{ holdfast: number; all: number }>(
      `select count(*) filter (where application_name like 'holdfast:%')::int as holdfast,
              count(*) filter (where application_name <> 'holdfast-bench')::int as all
       from pg_stat_activity where datname = current_database()`,
    );
    const tps = (x1 - x0) / seconds;
    const idle = {
      seconds: round(seconds, 1),
      transactionsPerSecond: round(tps, 2),
      perProcess: round(tps / opts.processes, 3),
      holdfastSessions: conns[0]?.holdfast ?? 0,
      backends: conns[0]?.all ?? 0,
    };

    mark("idle measured");
    // Claim latency: one task at a time, every process idle and woken by its NOTIFY.
    const claimMs: number[] = [];
    const c0 = await transactions(pool);
    for (let i = 0; i < opts.claims; i++) {
      const enqueuedAt = Date.now();
      const { id } = await hf.enqueue("job", { key: `claim${i}`, payload: { ms: 0 } });
      const start = await Promise.race(
        procs.map((p) => p.waitFor((e) => e.event === "start" && e.id === id, 10_000)),
      ).catch(() => undefined);
      if (!start) {
        missed.push(`claim ${i}: task ${id} not started within 10 s`);
        continue;
      }
      claimMs.push(start.at - enqueuedAt);
      const holder = procs.find((p) => p.name === start.worker);
      await holder?.waitFor((e) => e.event === "end" && e.id === id, 10_000).catch(() => {});
    }
    // Let the backends flush their counters: an idle backend reports up to 10 s late, and
    // every listening backend counts a transaction for each NOTIFY it reads (Postgres wakes
    // all listeners of the database for every notification, whatever the channel).
    await sleep(POOL_IDLE_MS + 1_000);
    const transactionsPerTask = round(((await transactions(pool)) - c0) / opts.claims, 1);

    mark("claims measured");
    // SIGKILL takeovers: the leader (with the task's holder when that is another process),
    // and a follower that holds the task while the leader lives.
    const leaderS: number[] = [];
    const followerS: number[] = [];
    for (let i = 0; i < opts.takeovers * 4; i++) {
      if (leaderS.length >= opts.takeovers && followerS.length >= opts.takeovers) break;
      const wantLeader =
        leaderS.length < opts.takeovers && (i % 2 === 0 || followerS.length >= opts.takeovers);
      const ok = await until(async () => (await leaderName(pool)) !== undefined, 10_000, 50);
      const leader = ok ? await leaderName(pool) : undefined;
      const { id } = await hf.enqueue("job", { key: `takeover${i}`, payload: { ms: 120_000 } });
      const first = await Promise.race(
        procs.map((p) => p.waitFor((e) => e.event === "start" && e.id === id, 10_000)),
      ).catch(() => undefined);
      if (!first) {
        missed.push(`takeover ${i}: task ${id} not started within 10 s`);
        await hf.cancel(id);
        continue;
      }
      const holder = procs.find((p) => p.name === first.worker) as WorkerProcess;
      const leaderProc = procs.find((p) => p.name === leader);
      const leaderDies = wantLeader || holder === leaderProc;
      const victims = new Set<WorkerProcess>([holder]);
      if (leaderDies && leaderProc) victims.add(leaderProc);
      await sleep(100); // the run is under way
      const killedAt = Date.now();
      await Promise.all([...victims].map((p) => p.kill("SIGKILL")));
      const survivors = procs.filter((p) => !victims.has(p));
      const restart = await Promise.race(
        survivors.map((p) =>
          p.waitFor((e) => e.event === "start" && e.id === id && e.attempt === 2, 10_000),
        ),
      ).catch(() => undefined);
      if (restart) (leaderDies ? leaderS : followerS).push((restart.at - killedAt) / 1000);
      else missed.push(`takeover ${i}: task ${id} not restarted within 10 s`);
      await hf.cancel(id);
      for (const v of victims) procs.splice(procs.indexOf(v), 1);
      await Promise.all([...victims].map(() => spawn()));
    }
    mark("takeovers measured");
    return {
      processes: opts.processes,
      idle,
      takeoverLeader: summarize(leaderS),
      takeoverFollower: summarize(followerS),
      claim: summarize(claimMs),
      transactionsPerTask,
      missed,
    };
  } finally {
    await Promise.all(procs.map((p) => p.kill("SIGKILL")));
    await hf.close();
    await pool.end();
    await dropDatabase(adminUrl, url);
  }
}
