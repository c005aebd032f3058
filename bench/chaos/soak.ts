import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { pino } from "pino";
import { Holdfast } from "../../src/index.js";
import { lockSessionDefaults, serverReleaseMs } from "../../src/worker/lock-session.js";
import { type Bouncer, pgbouncerBinary, startBouncer } from "../../test/support/pgbouncer.js";
import { type EmbeddedServer, startEmbedded } from "../../test/support/postgres.js";
import { startProxy, type TcpProxy } from "../../test/support/tcp-proxy.js";
import { createDatabase } from "../db.js";
import {
  type CheckResult,
  check,
  createHistoryCopies,
  extraSessions,
  type LogRun,
  watchSessions,
} from "./check.js";
import { drain } from "./progress.js";
import { checkTicks, type TickReport } from "./ticks.js";

/** pooler: worker w0 reaches Postgres through a session-mode PgBouncer, which is SIGKILLed and
 *  started again. */
export type Fault = "kill" | "partition" | "restart" | "pooler";

export interface SoakOptions {
  durationMs: number;
  workers: number;
  concurrency: number;
  faults: Fault[];
  /** Mean pause between faults. */
  faultEveryMs: number;
  /** Once faults stop, the soak waits for every task to end while keys progress (a task
   *  enqueued, started, an attempt ended); a key with unfinished tasks and no progress for
   *  `stuckMs` (default 60 s) is stuck, and `drainTimeoutMs` caps the wait whatever happens. */
  drainTimeoutMs: number;
  stuckMs?: number;
  /** Retention of every kind's finished tasks (default 2000 ms), pruned by the leader every
   *  second: pruning races the faults. The checker reads its own copies (createHistoryCopies). */
  retentionMs?: number;
  log?: (line: string) => void;
}

export interface SoakReport extends CheckResult {
  faults: Record<Fault, number>;
  /** Worker processes that died without being killed (each is restarted, like a supervisor). */
  crashes: number;
  enqueued: number;
  /** How long the drain took once faults stopped. */
  drainSeconds: number;
  /** The per-second schedule declared for the whole soak. */
  ticks: TickReport;
  /** Tasks pruned by the leaders during the soak (checked from the checker's copies). */
  pruned: number;
  seconds: number;
}

interface Instance {
  name: string;
  child: ChildProcess;
  exited: Promise<void>;
  killedAt?: number;
  exitedAt?: number;
}

const workerScript = fileURLToPath(new URL("./worker.ts", import.meta.url));
const rand = (a: number, b: number) => a + Math.random() * (b - a);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Runs N worker processes (each behind its own TCP proxy) against a private Postgres while
 * enqueuing short and long tasks and injecting faults, then lets the system drain and checks the
 * log: no overlapping runs of a key, no capped kind over its cap, every task ended exactly once,
 * nothing stuck.
 */
export async function soak(opts: SoakOptions): Promise<SoakReport> {
  const log = opts.log ?? (() => {});
  const started = Date.now();
  const server: EmbeddedServer = await startEmbedded(["-c", "fsync=off"]);
  const url = await createDatabase(server.url, "chaos");
  const hf = new Holdfast({ connectionString: url, logger: pino({ level: "silent" }) });
  await hf.migrate();
  // A query timeout: a drain query sent as Postgres restarts must not wait forever.
  const pool = new pg.Pool({
    connectionString: url,
    max: 3,
    connectionTimeoutMillis: 3_000,
    query_timeout: 15_000,
  });
  pool.on("error", () => {});
  await pool.query(`create table chaos_log (
    task_id bigint not null, key text not null, attempt int not null, fence bigint not null,
    worker text not null, started_at timestamptz not null, ended_at timestamptz)`);
  // Long tasks run on 4 keys under a cap of 2: the cap must hold through every fault.
  await createHistoryCopies(pool);
  const keep = `${opts.retentionMs ?? 2_000} milliseconds`;
  const retain = "retain_succeeded => $1, retain_cancelled => $1, retain_failed => $1";
  await pool.query(
    `select holdfast.define_kind('short', 20, ${retain}),
       holdfast.define_kind('long', 20, max_running => 2, ${retain})`,
    [keep],
  );
  // A per-second schedule for the whole soak: every tick must be enqueued exactly once,
  // whatever happens to the sweep leader (killed, partitioned, its Postgres restarted).
  await pool.query(`select holdfast.define_kind('tick', 20, ${retain})`, [keep]);
  await hf.schedule("chaos-tick", {
    cron: "* * * * * *",
    kind: "tick",
    key: "tick",
    payload: { ms: 5 },
  });

  // Handler exits (from worker events) and kill times, to close runs that recorded no end.
  const exits = new Map<string, number>();
  // Handlers started and not yet exited, by run: one still there after the drain is stuck.
  const live = new Map<string, { worker: string; at: number; abortedAt?: number }>();
  const instances = new Map<string, Instance>();
  const all: Instance[] = [];
  const proxies: TcpProxy[] = [];
  const generation = new Map<string, number>();
  let shuttingDown = false;
  // If the soak dies of an exception, its workers must not live on, reconnecting forever.
  const killAll = () => {
    for (const inst of all) if (inst.exitedAt === undefined) inst.child.kill("SIGKILL");
  };
  process.once("exit", killAll);

  const spawnWorker = async (slot: number): Promise<Instance> => {
    const gen = (generation.get(`w${slot}`) ?? 0) + 1;
    generation.set(`w${slot}`, gen);
    const name = `w${slot}.${gen}`;
    const child = spawn(process.execPath, ["--import", "tsx", workerScript], {
      env: {
        ...process.env,
        DATABASE_URL: (proxies[slot] as TcpProxy).url.replace(/\/postgres$/, new URL(url).pathname),
        HF_NAME: name,
        HF_CONCURRENCY: String(opts.concurrency),
        HF_PRUNE_MS: "1000",
      },
      stdio: ["ignore", "pipe", "inherit"],
    });
    let ready!: () => void;
    const isReady = new Promise<void>((r) => (ready = r));
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (line) => {
      try {
        const e = JSON.parse(line) as { event: string; id?: number; fence?: number; at: number };
        if (e.event === "ready") ready();
        const run = `${e.id}:${e.fence}`;
        if (e.event === "start") live.set(run, { worker: name, at: e.at });
        if (e.event === "abort") {
          const l = live.get(run);
          if (l) l.abortedAt = e.at;
        }
        if (e.event === "exit") live.delete(run);
        // A run ends when its handler exits or is told to stop, whichever comes first.
        if (e.event === "exit" || e.event === "abort") {
          const k = `${e.id}:${e.fence}`;
          exits.set(k, Math.min(exits.get(k) ?? e.at, e.at));
        }
      } catch {
        /* not an event */
      }
    });
    const inst: Instance = {
      name,
      child,
      exited: new Promise((r) =>
        child.once("exit", () => {
          inst.exitedAt = Date.now();
          r();
        }),
      ),
    };
    instances.set(`w${slot}`, inst);
    all.push(inst);
    void inst.exited.then(async () => {
      if (inst.killedAt !== undefined || shuttingDown) return;
      log(`chaos: ${name} crashed; restarting it`);
      await sleep(500);
      if (!shuttingDown) await spawnWorker(slot);
    });
    await Promise.race([isReady, inst.exited]);
    return inst;
  };

  // With the pooler fault, w0 goes through a session PgBouncer (behind its proxy, so that a
  // partition of w0 still cuts it off).
  let bouncer: Bouncer | undefined;
  if (opts.faults.includes("pooler")) {
    const { bin, reason } = pgbouncerBinary();
    if (!bin) throw new Error(`chaos: the pooler fault needs pgbouncer: ${reason}`);
    bouncer = await startBouncer(server.url, "session");
  }
  for (let i = 0; i < opts.workers; i++)
    proxies.push(await startProxy(i === 0 && bouncer ? bouncer.url(server.url) : server.url));
  for (let i = 0; i < opts.workers; i++) await spawnWorker(i);
  log(`chaos: ${opts.workers} workers up, faults: ${opts.faults.join(", ") || "none"}`);
  const watch = watchSessions(pool, serverReleaseMs(lockSessionDefaults));

  let enqueued = 0;
  let stop = false;
  const producer = (async () => {
    let n = 0;
    while (!stop) {
      n++;
      try {
        // About 10 enqueues/s, one in 40 long (4 s on average): ~1 slot of the cap of 2 is
        // busy, so the long kind keeps up through faults (one in 15 made 2.8 slots of work for
        // 2 slots: a backlog the drain could not finish, reported as stuck tasks).
        if (n % 40 === 0) {
          await hf.enqueue("long", { key: `long${n % 4}`, payload: { ms: rand(2_000, 6_000) } });
        } else {
          await hf.enqueue("short", {
            key: `k${Math.floor(rand(0, 12))}`,
            payload: { ms: rand(20, 300), ...(n % 23 === 0 ? { fail: true } : {}) },
            ...(n % 23 === 0 ? { maxAttempts: 2 } : {}),
          });
        }
        enqueued++;
      } catch {
        await sleep(200); // Postgres is restarting
      }
      await sleep(rand(30, 150));
    }
  })();

  const counts: Record<Fault, number> = { kill: 0, partition: 0, restart: 0, pooler: 0 };
  // The soak's duration counts from when its workers are up: on a loaded machine their start
  // alone could eat a short soak (one run enqueued a single task).
  const deadline = Date.now() + opts.durationMs;
  const order: Fault[] = [];
  while (opts.faults.length > 0 && Date.now() < deadline) {
    await sleep(rand(opts.faultEveryMs * 0.5, opts.faultEveryMs * 1.5));
    if (Date.now() >= deadline) break;
    // Each kind once per round, in a random order: a short soak still sees every kind.
    if (order.length === 0) order.push(...[...opts.faults].sort(() => Math.random() - 0.5));
    const fault = order.shift() as Fault;
    const slot = Math.floor(rand(0, opts.workers));
    counts[fault]++;
    if (fault === "kill") {
      const inst = instances.get(`w${slot}`) as Instance;
      log(`chaos: SIGKILL ${inst.name}`);
      inst.killedAt = Date.now();
      inst.child.kill("SIGKILL");
      await inst.exited;
      await sleep(rand(100, 1_000));
      await spawnWorker(slot);
    } else if (fault === "partition") {
      const ms = rand(1_000, 8_000);
      log(`chaos: partition w${slot} for ${Math.round(ms)} ms`);
      (proxies[slot] as TcpProxy).partition();
      await sleep(ms);
      (proxies[slot] as TcpProxy).heal();
    } else if (fault === "pooler" && bouncer) {
      log("chaos: SIGKILL the pooler in front of w0, then start it again");
      await bouncer.kill();
      await sleep(rand(200, 2_000));
      await bouncer.restart();
    } else {
      log("chaos: restart Postgres");
      await server.halt();
      await sleep(rand(200, 2_000));
      await server.start();
    }
  }
  if (opts.faults.length === 0) await sleep(Math.max(0, deadline - Date.now()));
  stop = true;
  await producer;
  log(`chaos: faults stopped after ${Math.round((Date.now() - started) / 1000)} s; draining`);

  // Ticks are checked up to 3 s before the schedule is removed: one due just before could
  // still be on its way (a leader that took over fires it within a second).
  await sleep(3_000);
  const ticksUntil = new Date(Date.now() - 3_000);
  await hf.unschedule("chaos-tick");

  // Drain: every task must reach a terminal state without further faults, as long as its key
  // progresses; a backlog is slow, a key without progress for stuckMs is stuck.
  const drained = await drain(pool, {
    stuckMs: opts.stuckMs ?? 60_000,
    maxMs: opts.drainTimeoutMs,
  });
  log(`chaos: drained in ${Math.round(drained.ms / 1000)} s`);
  // Handlers still running now have nothing left to run for: give them the worker pool's
  // query timeout to notice, then any left is stuck (e.g. waiting forever on its pool).
  const handlersEnd = Date.now() + 20_000;
  const stillLive = () =>
    [...live.entries()].filter(([, l]) => {
      const inst = all.find((i) => i.name === l.worker);
      return inst !== undefined && inst.exitedAt === undefined;
    });
  while (stillLive().length > 0 && Date.now() < handlersEnd) await sleep(250);
  const stuckHandlers = stillLive().map(([run, l]) => ({
    kind: "stuck-handler" as const,
    detail: `run ${run} on ${l.worker} started ${Math.round((Date.now() - l.at) / 1000)} s ago${
      l.abortedAt === undefined
        ? ""
        : `, told to stop ${Math.round((Date.now() - l.abortedAt) / 1000)} s ago`
    }, has not exited`,
  }));

  // A run with no recorded end stopped when its handler exited, or when its process died
  // (killed by us, or crashed on its own: counted in `crashes`).
  const deaths = new Map(all.map((i) => [i.name, i.killedAt ?? i.exitedAt]));
  const crashes = all.filter((i) => i.exitedAt !== undefined && i.killedAt === undefined).length;
  const runEnd = (r: LogRun) => exits.get(`${r.task_id}:${r.fence}`) ?? deaths.get(r.worker);
  const result = await check(pool, runEnd);
  const ticks = await checkTicks(pool, "tick", ticksUntil);
  const { rows: gone } = await pool.query<{ n: number }>(
    "select ((select count(*) from chaos_tasks) - (select count(*) from holdfast.tasks))::int as n",
  );
  result.violations.push(
    ...drained.violations,
    ...(await watch.stop()),
    ...(await extraSessions(pool)),
    ...stuckHandlers,
    ...ticks.violations,
  );

  shuttingDown = true;
  for (const inst of instances.values()) {
    inst.killedAt ??= Date.now();
    inst.child.kill("SIGKILL");
    await inst.exited;
  }
  process.off("exit", killAll);
  await Promise.all(proxies.map((p) => p.close()));
  await bouncer?.stop();
  await hf.close();
  await pool.end();
  await server.stop();
  return {
    ...result,
    faults: counts,
    crashes,
    enqueued,
    drainSeconds: Math.round(drained.ms / 1000),
    ticks: ticks.report,
    pruned: gone[0]?.n ?? 0,
    seconds: Math.round((Date.now() - started) / 1000),
  };
}
