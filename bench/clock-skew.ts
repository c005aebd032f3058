// The table of docs/time.md (issue 33): one worker process whose wall clock is off (libfaketime,
// monotonic clock true), the database on true time, everything measured on the server's clock:
// a task with run_at = now + 3 s, a debounce 2 s after the last of 3 enqueues, and a per-second
// schedule over 8 s. Run: npx tsx bench/clock-skew.ts (needs the Debian package faketime).
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { pino } from "pino";
import { Holdfast } from "../src/index.js";
import { collectJsonLines } from "../test/support/json-lines.js";
import { createRunsTable } from "../test/support/runs.js";
import { createDatabase, dropDatabase, sleep, startBenchServer } from "./db.js";

const lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const fixture = fileURLToPath(new URL("../test/fixtures/worker-process.ts", import.meta.url));
/** How long after its time a task still counts as "not started" (the issue's 7 s). */
const giveUpMs = 7_000;

async function row(adminUrl: string, skewS: number): Promise<string[]> {
  const url = await createDatabase(adminUrl, "clock");
  const hf = new Holdfast({ connectionString: url, logger: pino({ level: "silent" }) });
  await hf.migrate();
  const pool = new pg.Pool({ connectionString: url, max: 2 });
  await createRunsTable(pool);
  const q = async <R>(text: string, values: unknown[] = []) =>
    (await pool.query(text, values)).rows as R[];
  const env: Record<string, string> = { DATABASE_URL: url, HF_STEPS_KIND: "tick", HF_NAME: "w" };
  if (skewS !== 0)
    Object.assign(env, {
      LD_PRELOAD: lib,
      FAKETIME: `${skewS > 0 ? "+" : ""}${skewS}`,
      FAKETIME_DONT_FAKE_MONOTONIC: "1",
    });
  const child = spawn(process.execPath, ["--import", "tsx", fixture], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  try {
    const { waitFor } = collectJsonLines<{ event: string }>(child, "worker");
    await waitFor((e) => e.event === "ready", 120_000);
    await waitFor((e) => e.event === "leader", 10_000);
    const [t0] = await q<{ at: Date }>("select clock_timestamp() as at");
    await q("select holdfast.schedule('s', '* * * * * *', 'tick', 'ticks', $1)", [
      JSON.stringify({ steps: 0, stepMs: 0 }),
    ]);
    await q("select holdfast.enqueue('job', 'delayed', '{\"ms\": 0}', clock_timestamp() + '3 s')");
    for (let i = 0; i < 3; i++)
      await q(
        "select * from holdfast.enqueue_task('job', 'debounced', '{\"ms\": 0}', null, 0, 'd', null, 'keep', '2 seconds')",
      );
    // Until both started, or giveUpMs after the later due time (server's clock).
    const lateness = async () =>
      await q<{ key: string; late_ms: number | null; overdue_ms: number }>(
        `select t.key, extract(epoch from a.started_at - t.run_at) * 1000 as late_ms,
           extract(epoch from clock_timestamp() - t.run_at) * 1000 as overdue_ms
         from holdfast.tasks t left join holdfast.attempts a on a.task_id = t.id
         where t.kind = 'job' order by t.key`,
      );
    let rows = await lateness();
    while (rows.some((r) => r.late_ms === null && r.overdue_ms < giveUpMs)) {
      await sleep(50);
      rows = await lateness();
    }
    // Ticks of the 8 s after the declaration, counted once that window is over (+ 1 s).
    for (;;) {
      const [w] = await q<{ over: boolean }>(
        "select clock_timestamp() > $1::timestamptz + interval '9 s' as over",
        [t0?.at],
      );
      if (w?.over) break;
      await sleep(100);
    }
    const [ticks] = await q<{
      n: number;
      max_late_ms: number | null;
      median_late_ms: number | null;
    }>(
      `select count(*)::int as n, max(extract(epoch from enqueued_at - tick_at) * 1000) as max_late_ms,
         percentile_cont(0.5) within group (order by extract(epoch from enqueued_at - tick_at) * 1000)
           as median_late_ms
       from holdfast.schedule_ticks
       where tick_at > $1::timestamptz and tick_at <= $1::timestamptz + interval '8 s'
         and enqueued_at <= tick_at + interval '1 s'`,
      [t0?.at],
    );
    const cell = (key: string, what: string) => {
      const r = rows.find((x) => x.key === key);
      return r?.late_ms == null
        ? `not started ${giveUpMs / 1000} s after ${what}`
        : `${Math.round(r.late_ms).toLocaleString("en-US")} ms late`;
    };
    const clock = skewS === 0 ? "true" : `${Math.abs(skewS)} s ${skewS < 0 ? "behind" : "ahead"}`;
    return [
      clock,
      cell("delayed", "run_at"),
      cell("debounced", "its due time"),
      `${ticks?.n ?? 0} ticks${ticks?.max_late_ms == null ? "" : ` (late: median ${Math.round(ticks.median_late_ms ?? 0)} ms, max ${Math.round(ticks.max_late_ms)} ms)`}`,
    ];
  } finally {
    child.kill("SIGKILL");
    await pool.end();
    await hf.close();
    await dropDatabase(adminUrl, url).catch(() => {});
  }
}

if (!existsSync(lib)) throw new Error(`${lib} is missing: apt-get install faketime`);
const server = process.env.DATABASE_URL
  ? { url: process.env.DATABASE_URL, stop: async () => {} }
  : await startBenchServer();
try {
  console.log(
    "| worker's wall clock | task with `run_at` = now + 3 s | debounce 2 s after the last of 3 enqueues | per-second schedule, 8 s |",
  );
  console.log("|---|---|---|---|");
  for (const skewS of [0, -5, -30, 30])
    console.log(`| ${(await row(server.url, skewS)).join(" | ")} |`);
} finally {
  await server.stop();
}
