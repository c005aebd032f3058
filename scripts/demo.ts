// npm run demo: the deriver's story, compressed in time, on an embedded Postgres.
// 3 worker processes, 2 peers' dreams of several seconds each, one worker SIGKILLed mid-dream:
// the takeover resumes the dream from its last checkpoint, and the batches done before the kill
// are not done again. `npm run demo -- --no-checkpoints` runs the same without checkpoints (the
// takeover starts over). `npm run demo -- --dashboard [port]` serves the dashboard on the demo's database meanwhile
// (default port 8080) and keeps it, the database and the workers up until Ctrl-C.
import { type ChildProcess, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { pino } from "pino";
import { type Dashboard, startDashboard } from "../src/dashboard/server.js";
import { Holdfast } from "../src/index.js";
import { startEmbedded } from "../test/support/postgres.js";
import { overlaps } from "../test/support/runs.js";

const dashboardAt = process.argv.indexOf("--dashboard");
const dashboardPort =
  dashboardAt < 0 ? null : Number(process.argv[dashboardAt + 1] ?? 8080) || 8080;
const checkpoints = !process.argv.includes("--no-checkpoints");
const BATCHES = 12;
const BATCH_MS = 500; // one "model call" per batch: a dream of 6 s
const KILL_AFTER_MS = 2_000;
const t0 = Date.now();
const clock = (at: number) => `+${((at - t0) / 1000).toFixed(3).padStart(7)} s`;
const line = (at: number, text: string) => console.log(`${clock(at)}  ${text}`);

interface Event {
  event: string;
  worker: string;
  at: number;
  id?: number;
  key?: string;
  attempt?: number;
  fence?: number;
  from?: number;
}

console.log(
  `holdfast demo: 3 deriver workers, 2 dreams, one worker killed mid-dream (${checkpoints ? "with checkpoints" : "checkpoints off"})\n`,
);
const server = await startEmbedded();
const hf = new Holdfast({ connectionString: server.url, logger: pino({ level: "silent" }) });
const children: ChildProcess[] = [];
let dashboard: Dashboard | undefined;
try {
  await hf.migrate();
  await hf.defineKind("dream");
  await hf.pool.query(`create table dream_runs (task_id bigint, key text, worker text, attempt int,
    fence bigint, started_at timestamptz default clock_timestamp(), ended_at timestamptz);
    create table dream_batches (task_id bigint, key text, batch int, worker text, attempt int,
      at timestamptz default clock_timestamp())`);
  line(
    Date.now(),
    `embedded Postgres up, schema migrated (${server.url.replace(/:[^:@]*@/, ":***@")})`,
  );

  if (dashboardPort !== null) {
    dashboard = await startDashboard({
      hf,
      port: dashboardPort,
      logger: pino({ level: "silent" }),
    });
    line(Date.now(), `dashboard on ${dashboard.url}`);
  }

  const events: Event[] = [];
  const waiters: Array<() => void> = [];
  const waitFor = (pred: (e: Event) => boolean) =>
    new Promise<Event>((resolve) => {
      const check = () => {
        const hit = events.find(pred);
        if (hit) resolve(hit);
        else waiters.push(check);
      };
      check();
    });
  const workerScript = fileURLToPath(new URL("./demo-worker.ts", import.meta.url));
  const names = ["worker-1", "worker-2", "worker-3"];
  const byName = new Map<string, ChildProcess>();
  for (const name of names) {
    const child = spawn(process.execPath, ["--import", "tsx", workerScript], {
      env: {
        ...process.env,
        DATABASE_URL: server.url,
        HF_NAME: name,
        HF_CHECKPOINTS: checkpoints ? "1" : "0",
      },
      stdio: ["ignore", "pipe", "inherit"],
    });
    children.push(child);
    byName.set(name, child);
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (text) => {
      const e = JSON.parse(text) as Event;
      events.push(e);
      if (e.event === "start")
        line(
          e.at,
          `${e.worker} starts ${e.key} (task ${e.id}, attempt ${e.attempt}, fence ${e.fence})` +
            (e.from ? `, resuming from its checkpoint at batch ${e.from + 1} of ${BATCHES}` : ""),
        );
      if (e.event === "end")
        line(e.at, `${e.worker} finishes ${e.key} (task ${e.id}, attempt ${e.attempt})`);
      for (const w of waiters.splice(0)) w();
    });
  }
  await Promise.all(names.map((n) => waitFor((e) => e.event === "ready" && e.worker === n)));
  line(Date.now(), "3 workers idle, LISTENing");

  const dreams = ["dream:omni:ws:alice:alice", "dream:omni:ws:bob:bob"];
  for (const key of dreams) {
    const { id } = await hf.enqueue("dream", {
      key,
      payload: { batches: BATCHES, batchMs: BATCH_MS },
    });
    line(
      Date.now(),
      `enqueued ${key} (task ${id}, ${BATCHES} batches of ${BATCH_MS} ms of model time)`,
    );
  }
  const victimStart = await waitFor((e) => e.event === "start" && e.key === dreams[0]);
  await new Promise((r) => setTimeout(r, KILL_AFTER_MS));
  const killedAt = Date.now();
  byName.get(victimStart.worker)?.kill("SIGKILL");
  line(killedAt, `SIGKILL ${victimStart.worker} in the middle of ${victimStart.key}`);
  const takeover = await waitFor(
    (e) => e.event === "start" && e.key === dreams[0] && e.attempt === 2,
  );
  line(
    takeover.at,
    `${takeover.worker} took ${takeover.key} over ${takeover.at - killedAt} ms after the kill`,
  );

  // Wait for both dreams to end.
  for (;;) {
    const { rows } = await hf.pool.query(
      "select count(*)::int as n from holdfast.tasks where state <> 'succeeded'",
    );
    if (rows[0].n === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }

  const { rows: runs } = await hf.pool.query(
    "select key, worker, attempt, started_at, ended_at from dream_runs order by key, started_at",
  );
  const overlapping = overlaps(runs, () => killedAt).length;
  // The killed dream's batches: which were done before the kill, and which were done again.
  const { rows: batches } = await hf.pool.query<{ batch: number; attempt: number }>(
    "select batch, attempt from dream_batches where key = $1 order by at",
    [dreams[0]],
  );
  const before = batches.filter((b) => b.attempt === 1).length;
  const repeated = batches.length - new Set(batches.map((b) => b.batch)).size;
  const completed = runs.filter((r) => r.ended_at).length;
  console.log("\nruns per enqueued dream:");
  for (const key of dreams) {
    const mine = runs.filter((r) => r.key === key);
    const desc = mine
      .map((r) => `${r.worker} attempt ${r.attempt} ${r.ended_at ? "completed" : "killed"}`)
      .join(", ");
    console.log(`  ${key}: ${mine.length} run(s): ${desc}`);
  }
  console.log(
    `\n${dreams[0]}: ${before} of ${BATCHES} batches done before the kill; ` +
      (takeover.from
        ? `the takeover resumed at batch ${takeover.from + 1} from the checkpoint: `
        : "the takeover started over from batch 1: ") +
      `${repeated} batches (${(repeated * BATCH_MS) / 1000} s of model time) done twice, ` +
      `${before - repeated} not repeated`,
  );
  console.log(
    `\nverdict: ${dreams.length} dreams enqueued, ${completed} completed runs, ${overlapping} overlapping runs, ` +
      `takeover ${takeover.at - killedAt} ms after SIGKILL (no timeout configured anywhere)`,
  );
  if (overlapping > 0 || completed !== dreams.length) process.exitCode = 1;
  if (checkpoints && repeated > 0) process.exitCode = 1;
  if (dashboard) {
    console.log(
      `\ndashboard: ${dashboard.url} (or: npm run dashboard -- --port 8081 --database '${server.url}')\nCtrl-C to stop`,
    );
    await new Promise((resolve) => process.once("SIGINT", resolve));
  }
} finally {
  await dashboard?.close();
  for (const c of children) c.kill("SIGKILL");
  await hf.close();
  await server.stop();
}
