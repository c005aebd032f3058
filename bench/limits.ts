// Limits (docs/limits.md): `npx tsx bench/limits.ts` alone, or the `limits` section of
// bench/run.ts (`npm run bench -- --only limits`).
// - rate: a limit of N starts per second drawn on by 4 worker processes while one of them is
//   SIGKILLed and restarted every few seconds: the admissions achieved per second beside N, and
//   the most admissions any 1 s window held (never above N is the promise);
// - cost: claim (+ complete, timed apart) of a kind without limits, beside a limited kind with
//   room whose window holds 1,000 and 100,000 runs.
import { type ChildProcess, spawn } from "node:child_process";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { pino } from "pino";
import { Holdfast } from "../src/index.js";
import { createDatabase, dropDatabase, sleep, startBenchServer } from "./db.js";
import { fmt, type Summary, summarize, table } from "./stats.js";

export interface LimitRateResult {
  limitPerSecond: number;
  processes: number;
  seconds: number;
  kills: number;
  admitted: number;
  /** Admissions per second over the measured span (first to last admission). */
  achievedPerSecond: number;
  /** The most admissions in any window of 1 s (the limit: limitPerSecond). */
  maxInAnyWindow: number;
}

export interface LimitCostResult extends Summary {
  op: string;
  variant: string;
}

const workerFile = fileURLToPath(new URL("./limit-worker.ts", import.meta.url));

function startChild(url: string, concurrency: number): Promise<ChildProcess> {
  const child = spawn(process.execPath, ["--import", "tsx", workerFile], {
    env: { ...process.env, DATABASE_URL: url, HF_CONCURRENCY: String(concurrency) },
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
    lines.on("line", (l) => {
      if (l === "ready") resolve(child);
    });
    child.once("exit", (code) => reject(new Error(`limit worker exited (${code})`)));
  });
}

async function kill(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  child.kill("SIGKILL");
  await exited;
}

/** The most timestamps (ms, sorted) inside any half-open window [t, t + 1000). */
export function maxInWindow(at: number[], windowMs: number): number {
  let most = 0;
  let lo = 0;
  for (let hi = 0; hi < at.length; hi++) {
    while ((at[hi] as number) - (at[lo] as number) >= windowMs) lo++;
    most = Math.max(most, hi - lo + 1);
  }
  return most;
}

export async function limitRate(
  adminUrl: string,
  opts: { perSecond: number; seconds: number; processes: number; killEveryMs: number },
): Promise<LimitRateResult> {
  const url = await createDatabase(adminUrl, "limits");
  const hf = new Holdfast({ connectionString: url, logger: pino({ level: "silent" }) });
  await hf.migrate();
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  const children: ChildProcess[] = [];
  try {
    await hf.defineLimit("bench-rate", { units: opts.perSecond, per: "1 second" });
    await hf.defineKind("rate", { limits: { "bench-rate": 1 } });
    // Admissions are pruned once out of their window: a trigger keeps a copy to measure.
    await db.query(`create table admissions (at timestamptz);
      create function record_admission() returns trigger language plpgsql as
        $$ begin insert into public.admissions values (new.at); return null; end $$;
      create trigger record after insert on holdfast.limit_runs
        for each row execute function record_admission()`);
    // More work than the limit lets through: the limit, not the backlog, sets the pace.
    const n = Math.ceil(opts.perSecond * opts.seconds * 3);
    await db.query(
      `select count(holdfast.enqueue('rate', 'k' || i, jsonb_build_object('ms', 20)))
       from generate_series(1, $1) i`,
      [n],
    );
    for (let i = 0; i < opts.processes; i++) children.push(await startChild(url, 8));
    const end = Date.now() + opts.seconds * 1000;
    let kills = 0;
    while (Date.now() < end) {
      await sleep(Math.min(opts.killEveryMs, end - Date.now()));
      if (Date.now() >= end) break;
      const victim = children.shift();
      if (victim) await kill(victim);
      kills++;
      children.push(await startChild(url, 8));
    }
    const stop = await db.query<{ ms: number }>(
      "select extract(epoch from clock_timestamp()) * 1000 as ms",
    );
    const endMs = Number(stop.rows[0]?.ms);
    await Promise.all(children.map(kill));
    const { rows } = await db.query<{ ms: number }>(
      "select extract(epoch from at) * 1000 as ms from admissions order by at",
    );
    const all = rows.map((r) => Number(r.ms));
    const at = all.filter((t) => t <= endMs);
    const span = (endMs - (at[0] ?? endMs)) / 1000;
    return {
      limitPerSecond: opts.perSecond,
      processes: opts.processes,
      seconds: opts.seconds,
      kills,
      admitted: at.length,
      // Over the span from the first admission to the end of the run: the first window's
      // worth is admitted at once, then the limit's pace.
      achievedPerSecond: Math.round(((at.length - opts.perSecond) / span) * 10) / 10,
      maxInAnyWindow: maxInWindow(all, 1000),
    };
  } finally {
    await Promise.all(children.map(kill));
    await db.end();
    await hf.close();
    await dropDatabase(adminUrl, url);
  }
}

export async function limitCost(adminUrl: string, samples: number): Promise<LimitCostResult[]> {
  const url = await createDatabase(adminUrl, "limitcost");
  const hf = new Holdfast({ connectionString: url, logger: pino({ level: "silent" }) });
  await hf.migrate();
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  const warmup = 20;
  const variants = [
    { kind: "plain", label: "kind without limits", held: 0 },
    { kind: "lim1k", label: "limited kind, 1,000 runs in its window", held: 1_000 },
    { kind: "lim100k", label: "limited kind, 100,000 runs in its window", held: 100_000 },
  ];
  const times = variants.map(() => ({ claim: [] as number[], complete: [] as number[] }));
  try {
    for (const v of variants) {
      if (v.held === 0) {
        await hf.defineKind(v.kind);
        continue;
      }
      await hf.defineLimit(v.kind, { units: 1_000_000_000, per: "1 hour" });
      await hf.defineKind(v.kind, { limits: { [v.kind]: 1 } });
      // Runs admitted over the last 50 minutes: none leaves the window during the bench.
      await c.query(
        `insert into holdfast.limit_runs (limit_name, key, fence, at, reserved)
         select $1, 'seed' || i, i, now() - interval '50 minutes' + i * (interval '50 minutes' / $2),
           1 from generate_series(1, $2) i`,
        [v.kind, v.held],
      );
      await c.query("update holdfast.limits set used = $2 where name = $1", [v.kind, v.held]);
    }
    await c.query("analyze");
    const timed = async (fn: () => Promise<unknown>) => {
      const t0 = performance.now();
      await fn();
      return performance.now() - t0;
    };
    for (let i = 0; i < samples + warmup; i++) {
      for (const [j, v] of variants.entries()) {
        await hf.enqueue(v.kind, { key: `${v.kind}:${i}` });
        let row: { id: string; fence: string } | undefined;
        const claim = await timed(async () => {
          const r = await c.query<{ id: string; fence: string }>(
            "select id, fence from holdfast.claim(array[$1], 'bench', 1, 1)",
            [v.kind],
          );
          row = r.rows[0];
        });
        if (!row) throw new Error(`limits bench: nothing claimed of ${v.kind}`);
        const done = row;
        const complete = await timed(() =>
          c.query("select holdfast.complete($1, $2)", [done.id, done.fence]),
        );
        if (i >= warmup) {
          times[j]?.claim.push(claim);
          times[j]?.complete.push(complete);
        }
      }
    }
  } finally {
    await c.end();
    await hf.close();
    await dropDatabase(adminUrl, url);
  }
  return variants.flatMap((v, j) => [
    { op: "claim", variant: v.label, ...summarize(times[j]?.claim ?? []) },
    { op: "complete", variant: v.label, ...summarize(times[j]?.complete ?? []) },
  ]);
}

export function renderLimits(rate: LimitRateResult[], cost: LimitCostResult[]): string {
  return [
    table([
      ["limit/s", "processes", "SIGKILLs", "s", "admitted", "achieved/s", "max in any 1 s"],
      ...rate.map((r) => [
        String(r.limitPerSecond),
        String(r.processes),
        String(r.kills),
        String(r.seconds),
        String(r.admitted),
        String(r.achievedPerSecond),
        String(r.maxInAnyWindow),
      ]),
    ]),
    table([
      ["op", "variant", "n", "p50", "p95", "p99"],
      ...cost.map((c) => [c.op, c.variant, String(c.n), fmt(c.p50), fmt(c.p95), fmt(c.p99)]),
    ]),
  ].join("\n\n");
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const server = await startBenchServer();
  try {
    const rate = [
      await limitRate(server.url, { perSecond: 50, seconds: 20, processes: 4, killEveryMs: 4_000 }),
    ];
    const cost = await limitCost(server.url, Number(process.argv[2] ?? 300));
    process.stdout.write(`${renderLimits(rate, cost)}\n`);
  } finally {
    await server.stop();
  }
}
