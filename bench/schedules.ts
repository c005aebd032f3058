// Schedules under fire: each system's finest recurring schedule, run by 3 worker processes
// (bench/peers/schedule-worker.ts) while one of them is SIGKILLed every 10 s and restarted at once, as
// a supervisor would. Every job is read back and filed under its tick: ticks expected, enqueued,
// skipped, duplicated, and how late each tick was enqueued (job created − tick) and started
// (handler start − tick).
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { collectJsonLines, type JsonLines } from "../test/support/json-lines.js";
import { createDatabase, dropDatabase, sleep, until } from "./db.js";
import {
  type Handled,
  holdfastPeer,
  type Job,
  type Peer,
  type SystemName,
} from "./schedule-systems.js";
import { fmt, percentile, table } from "./stats.js";

export interface ScheduleRow {
  system: string;
  /** The finest schedule the system accepts, and the cron expression run. */
  precision: string;
  cron: string;
  /** The measured window (its ticks are the expected ones), s; 0: not run. */
  windowSeconds: number;
  expected: number;
  /** Jobs whose tick is in the window (a duplicate counts twice). */
  enqueued: number;
  skipped: number;
  duplicated: number;
  /** Job created − tick, first job of each tick, ms. */
  lateP50Ms: number | null;
  lateP99Ms: number | null;
  lateMaxMs: number | null;
  /** Handler start − tick, first start of each tick, ms. */
  startP99Ms: number | null;
  kills: number;
  /** holdfast: each kill of the sweep leader → the next leader's election, ms (null: none
   *  within 10 s). */
  reelectMs?: Array<number | null>;
  note: string;
}

/** One tick of a minute-precision peer (few enough to print each). */
export interface PeerTick {
  system: string;
  tick: string;
  jobs: number;
  lateMs: number | null;
  startMs: number | null;
}

export interface ScheduleBenchResult {
  rows: ScheduleRow[];
  peerTicks: PeerTick[];
}

export interface ScheduleBenchOptions {
  quick: boolean;
  log: (line: string) => void;
  /** graphile-worker's and pg-boss's parts (bench/peers/schedule.ts, loaded with the peers). */
  peers: Peer[];
}

const workerScript = fileURLToPath(new URL("peers/schedule-worker.ts", import.meta.url));
const processes = 3;
const killEveryMs = 10_000;

interface WorkerLine {
  event: string;
  worker: string;
  at: number;
}

/** One bench/peers/schedule-worker.ts child. */
class Proc {
  readonly lines: Array<WorkerLine | (Handled & { at: number })>;
  readonly started = Date.now();
  private readonly exited: Promise<void>;

  private constructor(
    readonly name: string,
    private readonly child: ChildProcess,
    private readonly json: JsonLines<WorkerLine>,
  ) {
    this.lines = json.lines;
    this.exited = new Promise((resolve) => child.once("exit", () => resolve()));
  }

  static async start(system: SystemName, url: string, name: string): Promise<Proc> {
    const child = spawn(process.execPath, ["--import", "tsx", workerScript], {
      env: { ...process.env, SCHED_SYSTEM: system, DATABASE_URL: url, SCHED_NAME: name },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const p = new Proc(name, child, collectJsonLines<WorkerLine>(child, `${system} ${name}`));
    try {
      await p.json.waitFor((l) => l.event === "ready", 120_000);
    } catch (err) {
      await p.kill();
      throw err;
    }
    return p;
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** When this process was last elected sweep leader (holdfast), ms epoch. */
  get ledAt(): number | undefined {
    return this.lines.findLast((l) => l.event === "leader")?.at;
  }

  async kill(): Promise<void> {
    if (this.alive) this.child.kill("SIGKILL");
    await this.exited;
  }
}

interface RunOutcome {
  row: ScheduleRow;
  ticks: PeerTick[];
}

/**
 * Runs one system: 3 workers, then a window of `windowMs` from the next 10 s boundary after they
 * are all ready; every 10 s from its start (at a random millisecond of the first second of each
 * 10) the victim is SIGKILLed and a replacement started. holdfast's victim is the sweep leader (the process that
 * fires ticks: its latest `leader` line); the peers have no leader (every graphile-worker process
 * runs the cron timer, any pg-boss instance claims the next cron pass), so theirs is the oldest.
 */
async function runSystem(
  adminUrl: string,
  peer: Peer,
  windowMs: number,
  graceMs: number,
  log: (l: string) => void,
): Promise<RunOutcome> {
  const url = await createDatabase(adminUrl, `sched_${peer.system}`);
  const all: Proc[] = [];
  let live: Proc[] = [];
  let spawned = 0;
  const startOne = async () => {
    const p = await Proc.start(peer.system, url, `${peer.system}-${spawned++}`);
    all.push(p);
    live.push(p);
    return p;
  };
  let kills = 0;
  const reelect: Array<number | null> = [];
  const notes: string[] = [];
  let t0 = 0;
  let t1 = 0;
  try {
    await peer.setup(url);
    await Promise.all(Array.from({ length: processes }, startOne));
    // On a 10 s boundary: a kill in the first second of every 10 s is, for the per-minute peers,
    // one kill in 6 in the second after their tick (when their cron fires).
    t0 = Math.ceil(Date.now() / killEveryMs) * killEveryMs;
    t1 = t0 + windowMs;
    const restarts: Array<Promise<Proc>> = [];
    for (let at = t0; at < t1; at += killEveryMs) {
      await sleep(at + Math.floor(Math.random() * 1000) - Date.now());
      let victim: Proc | undefined;
      if (peer.system === "holdfast") {
        // The leader: elected last among the live. Right after a kill there may be none yet.
        const leader = () =>
          live
            .filter((p) => p.ledAt !== undefined)
            .sort((a, b) => (b.ledAt ?? 0) - (a.ledAt ?? 0))[0];
        await until(() => leader() !== undefined, 3_000, 20);
        victim = leader();
        if (!victim) notes.push(`no leader to kill at +${Math.round((Date.now() - t0) / 1000)} s`);
      } else {
        victim = [...live].sort((a, b) => a.started - b.started)[0];
      }
      if (!victim) continue;
      const killedAt = Date.now();
      await victim.kill();
      kills++;
      live = live.filter((p) => p !== victim);
      restarts.push(startOne());
      if (peer.system === "holdfast") {
        void until(() => live.some((p) => (p.ledAt ?? 0) > killedAt), killEveryMs, 10).then(
          (ok) => {
            const next = Math.min(...live.map((p) => p.ledAt ?? 0).filter((a) => a > killedAt));
            reelect.push(ok ? next - killedAt : null);
          },
        );
      }
    }
    await Promise.all(restarts);
    // The last tick's job: wait for it (a tick not enqueued by then counts as skipped).
    const last = t1 - (t1 % peer.stepMs);
    await until(
      async () => (await peer.jobs(url, handledOf(all))).some((j) => j.tick === last),
      Math.max(0, t1 + graceMs - Date.now()),
      250,
    );
  } finally {
    await Promise.all(all.map((p) => p.kill()));
  }
  const handled = handledOf(all);
  const jobs = await peer.jobs(url, handled);
  await dropDatabase(adminUrl, url);
  log(`  ${peer.label}: ${jobs.length} jobs, ${kills} kills`);
  return summarize(peer, jobs, handled, t0, t1, kills, reelect, notes);
}

function handledOf(procs: Proc[]): Handled[] {
  return procs.flatMap((p) =>
    p.lines.filter((l): l is Handled & { at: number } => l.event === "handled"),
  );
}

/** Files jobs under the ticks of (t0, t1] and counts them. */
function summarize(
  peer: Peer,
  jobs: Job[],
  handled: Handled[],
  t0: number,
  t1: number,
  kills: number,
  reelect: Array<number | null>,
  notes: string[],
): RunOutcome {
  const startOf = new Map<string, number>();
  for (const h of handled) startOf.set(h.id, Math.min(h.started, startOf.get(h.id) ?? h.started));
  const byTick = new Map<number, Job[]>();
  for (const j of jobs) {
    if (j.tick <= t0 || j.tick > t1) continue;
    byTick.set(j.tick, [...(byTick.get(j.tick) ?? []), j]);
  }
  const ticks: PeerTick[] = [];
  let expected = 0;
  let skipped = 0;
  let duplicated = 0;
  let enqueued = 0;
  const late: number[] = [];
  const start: number[] = [];
  for (let t = t0 - (t0 % peer.stepMs) + peer.stepMs; t <= t1; t += peer.stepMs) {
    expected++;
    const of = (byTick.get(t) ?? []).sort((a, b) => a.created - b.created);
    byTick.delete(t);
    enqueued += of.length;
    if (of.length === 0) skipped++;
    duplicated += Math.max(0, of.length - 1);
    const first = of[0];
    const started = of.flatMap((j) => startOf.get(j.id) ?? []);
    const lateMs = first ? first.created - t : null;
    const startMs = started.length > 0 ? Math.min(...started) - t : null;
    if (lateMs !== null) late.push(lateMs);
    if (startMs !== null) start.push(startMs);
    ticks.push({
      system: peer.label,
      tick: new Date(t).toISOString(),
      jobs: of.length,
      lateMs,
      startMs,
    });
  }
  // Jobs at a time the expression does not name (none expected).
  const offGrid = [...byTick.values()].reduce((n, js) => n + js.length, 0);
  if (offGrid > 0) notes.push(`${offGrid} jobs at times the schedule does not name`);
  const pct = (xs: number[], p: number) => (xs.length > 0 ? percentile(xs, p) : null);
  const row: ScheduleRow = {
    system: peer.label,
    precision: peer.precision,
    cron: peer.cron,
    windowSeconds: Math.round((t1 - t0) / 1000),
    expected,
    enqueued,
    skipped,
    duplicated,
    lateP50Ms: pct(late, 50),
    lateP99Ms: pct(late, 99),
    lateMaxMs: pct(late, 100),
    startP99Ms: pct(start, 99),
    kills,
    ...(peer.system === "holdfast" ? { reelectMs: reelect } : {}),
    note: [peer.config, ...notes].join("; "),
  };
  return { row, ticks };
}

function notRun(peer: Peer, why: string): ScheduleRow {
  return {
    system: peer.label,
    precision: peer.precision,
    cron: peer.cron,
    windowSeconds: 0,
    expected: 0,
    enqueued: 0,
    skipped: 0,
    duplicated: 0,
    lateP50Ms: null,
    lateP99Ms: null,
    lateMaxMs: null,
    startP99Ms: null,
    kills: 0,
    note: why,
  };
}

/**
 * holdfast's per-second schedule for 60 s (quick: 20 s), then graphile-worker's crontab and
 * pg-boss's schedule() side by side for 150 s (at least 2 ticks of their finest, per-minute,
 * schedule; not run with `quick`). Each system gets its own database and 3 worker processes.
 */
export async function scheduleBench(
  adminUrl: string,
  opts: ScheduleBenchOptions,
): Promise<ScheduleBenchResult> {
  const log = opts.log;
  log(`  holdfast, per second, ${opts.quick ? 20 : 60} s…`);
  const hf = await runSystem(adminUrl, holdfastPeer, opts.quick ? 20_000 : 60_000, 5_000, log);
  const peers = opts.peers;
  if (opts.quick) {
    return {
      rows: [
        hf.row,
        ...peers.map((p) => notRun(p, "not run with --quick: per-minute ticks need minutes")),
      ],
      peerTicks: [],
    };
  }
  log("  graphile-worker and pg-boss, per minute, 150 s, side by side…");
  const out = await Promise.all(peers.map((p) => runSystem(adminUrl, p, 150_000, 30_000, log)));
  return { rows: [hf.row, ...out.map((o) => o.row)], peerTicks: out.flatMap((o) => o.ticks) };
}

const ms = (x: number | null | undefined) =>
  x === null || x === undefined ? "-" : fmt(x / 1000, 3);

/** The section's printed tables. */
export function renderSchedules(r: ScheduleBenchResult): string {
  const out = [
    "Schedules: finest schedule, 3 worker processes, one SIGKILLed every 10 s and restarted",
    "(holdfast: the sweep leader); lateness = job created − tick, start = handler start − tick (s)",
    table([
      [
        "system",
        "precision",
        "window s",
        "expected",
        "enqueued",
        "skipped",
        "duplicated",
        "late p50",
        "late p99",
        "late max",
        "start p99",
        "kills",
        "note",
      ],
      ...r.rows.map((x) => [
        x.system,
        x.precision,
        // A system not run shows no counts.
        ...[x.windowSeconds, x.expected, x.enqueued, x.skipped, x.duplicated].map((n) =>
          x.windowSeconds > 0 ? String(n) : "-",
        ),
        ms(x.lateP50Ms),
        ms(x.lateP99Ms),
        ms(x.lateMaxMs),
        ms(x.startP99Ms),
        x.windowSeconds > 0 ? String(x.kills) : "-",
        x.note,
      ]),
    ]),
  ];
  const hf = r.rows.find((x) => x.reelectMs !== undefined);
  if (hf) {
    const met = hf.skipped === 0 && hf.duplicated === 0 && (hf.lateP99Ms ?? Infinity) <= 1_000;
    out.push(
      `holdfast: leader killed → next leader elected (s): ${hf.reelectMs?.map(ms).join(", ")}`,
      `holdfast target (0 skipped, 0 duplicated, late p99 ≤ 1 s): ${met ? "met" : "NOT met"}`,
    );
  }
  if (r.peerTicks.length > 0) {
    out.push("", "Per-minute ticks of the peers (s after the tick)");
    out.push(
      table([
        ["system", "tick", "jobs", "created", "started"],
        ...r.peerTicks.map((t) => [t.system, t.tick, String(t.jobs), ms(t.lateMs), ms(t.startMs)]),
      ]),
    );
  }
  return out.join("\n");
}
