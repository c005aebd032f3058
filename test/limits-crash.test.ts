// Limits across worker processes and through crashes (guarantee 9): a SIGKILLed run keeps its
// reservation counted, and no window of a limit ever holds more than its units, whatever the
// number of processes claiming at once.
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Holdfast } from "../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";
import { collectJsonLines } from "./support/json-lines.js";
import { until } from "./support/wait.js";

interface Event {
  event: string;
  worker: string;
  at: number;
  [k: string]: unknown;
}

const fixture = fileURLToPath(new URL("./fixtures/limit-worker.ts", import.meta.url));
let db: TestDatabase;
const children: ChildProcess[] = [];

beforeAll(async () => {
  db = await freshDatabase();
  await db.pool.query(`create table limit_starts (task_id bigint, key text, attempt int,
    worker text, limit_name text, at timestamptz)`);
});
afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  await db.drop();
});

async function start(name: string, concurrency = 1) {
  const child = spawn(process.execPath, ["--import", "tsx", fixture], {
    env: { ...process.env, DATABASE_URL: db.url, HF_NAME: name, HF_CONCURRENCY: `${concurrency}` },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  const { lines, waitFor } = collectJsonLines<Event>(child, `limit worker ${name}`);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  await waitFor((e) => e.event === "ready", 120_000);
  return {
    name,
    lines,
    waitFor,
    kill: async () => {
      child.kill("SIGKILL");
      await exited;
    },
  };
}

it("a SIGKILLed run keeps its reservation: its task is requeued but waits for the window instead of starting again", async () => {
  const hf = new Holdfast({ pool: db.pool, logger: silent });
  await hf.defineLimit("crash-requests", { units: 1, per: "1 hour" });
  await hf.defineKind("llm", { limits: { "crash-requests": 1 } });
  const a = await start("a");
  const { id } = await hf.enqueue("llm", { key: "dream:ws:alice", payload: { ms: 600_000 } });
  await a.waitFor((e) => e.event === "start" && e.id === id);
  const b = await start("b");
  await a.kill();

  // b takes over the sweep, requeues the orphan, claims, and finds no room until the dead
  // run's reservation leaves the window (an hour from its admission).
  const takeover = await b.waitFor((e) => e.event === "takeover", 20_000);
  const idle = await b.waitFor((e) => e.event === "idle" && e.at >= takeover.at, 20_000);
  expect(idle.nextRunAt as number).toBeGreaterThan(Date.now() + 50 * 60_000);
  const { rows } = await db.pool.query<{ state: string; attempt: number }>(
    "select state, attempt from holdfast.tasks where id = $1",
    [id],
  );
  expect(rows[0]).toEqual({ state: "pending", attempt: 1 }); // the lost attempt counted once
  expect(b.lines.some((e) => e.event === "start")).toBe(false);
  const [usage] = (await hf.limits()).filter((l) => l.name === "crash-requests");
  expect(usage).toMatchObject({ used: 1, reserved: 1, runs: 1, waiting: 1 });
  await b.kill();
  await hf.cancel(id);
});

it("3 processes never admit more than the limit's units in any window, while one is SIGKILLed", async () => {
  const hf = new Holdfast({ pool: db.pool, logger: silent });
  await hf.defineLimit("fleet-requests", { units: 4, per: "1 second" });
  await hf.defineKind("llm", { limits: { "fleet-requests": 1 } });
  await db.pool.query("truncate limit_starts");
  const procs = await Promise.all(["p1", "p2", "p3"].map((n) => start(n, 3)));
  const n = 28;
  const ids: number[] = [];
  for (let i = 0; i < n; i++)
    ids.push((await hf.enqueue("llm", { key: `k${i}`, payload: { ms: 150 } })).id);
  const victim = procs[2];
  await victim?.waitFor((e) => e.event === "start", 20_000);
  await victim?.kill();
  await until(
    async () => {
      const { rows } = await db.pool.query<{ n: number }>(
        "select count(*)::int as n from holdfast.tasks where id = any ($1) and state = 'succeeded'",
        [ids],
      );
      return rows[0]?.n === n;
    },
    60_000,
    "every task succeeded",
  );

  const { rows } = await db.pool.query<{ ms: number }>(
    "select extract(epoch from at) * 1000 as ms from limit_starts where limit_name = 'fleet-requests' order by at",
  );
  const at = rows.map((r) => Number(r.ms));
  expect(at.length).toBeGreaterThanOrEqual(n); // a killed run's retry is admitted again
  // Any window of 1 s holds at most 4 admissions: the 5th after any admission is >= 1 s later.
  const crowded = at.filter((t, i) => i + 4 < at.length && (at[i + 4] as number) - t < 1_000);
  expect(crowded).toEqual([]);
  // And the limit was used: n admissions at 4 per second take at least (n / 4 - 1) s.
  expect((at.at(-1) as number) - (at[0] as number)).toBeGreaterThanOrEqual((n / 4 - 1) * 1_000);
  await Promise.all(procs.slice(0, 2).map((p) => p.kill()));
}, 120_000);
