import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Holdfast, InvalidArgumentError, type Task } from "../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";
import { collectJsonLines } from "./support/json-lines.js";
import type { WorkerEvent } from "./support/processes.js";

const fixture = fileURLToPath(new URL("./fixtures/producer-process.ts", import.meta.url));
let db: TestDatabase;
let hf: Holdfast;
const started: Array<{ task: Task; at: number }> = [];
const waiting = new Set<() => void>();

beforeAll(async () => {
  db = await freshDatabase();
  hf = new Holdfast({ connectionString: db.url, logger: silent });
  const worker = hf.worker({
    // Only the timer (or a NOTIFY) may start a debounced task: no rescan within the test.
    rescanIntervalMs: 600_000,
    concurrency: 2,
    handlers: {
      dream: async (task) => {
        started.push({ task, at: Date.now() });
        for (const w of waiting) w();
      },
    },
  });
  await worker.start();
});

afterAll(async () => {
  await hf.close();
  await db.drop();
});

function startOf(id: number): Promise<{ task: Task; at: number }> {
  return new Promise((resolve) => {
    const check = () => {
      const hit = started.find((s) => s.task.id === id);
      if (hit) {
        waiting.delete(check);
        resolve(hit);
      }
    };
    waiting.add(check);
    check();
  });
}

/** Runs two producer processes at once to completion; returns their enqueue events. */
async function produce(
  key: string,
  env: { HF_COUNT: string; HF_EVERY_MS: string; HF_DEBOUNCE: string; HF_MAX_WAIT: string },
): Promise<WorkerEvent[]> {
  const runs = ["p1", "p2"].map((name) => {
    const child = spawn(process.execPath, ["--import", "tsx", fixture], {
      env: { ...process.env, DATABASE_URL: db.url, HF_NAME: name, HF_KEY: key, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const lines = collectJsonLines<WorkerEvent>(child, `producer ${name}`);
    return lines.waitFor((e) => e.event === "done", 60_000).then(() => lines.lines);
  });
  return (await Promise.all(runs)).flat().filter((e) => e.event === "enqueued");
}

async function taskRow(id: number) {
  const { rows } = await db.pool.query<{ run_at: Date; created_at: Date; started_at: Date }>(
    "select run_at, created_at, started_at, payload from holdfast.tasks where id = $1",
    [id],
  );
  return rows[0];
}

it("two producers' requests fold into one task that starts debounce after the latest one, payloads merged", async () => {
  const events = await produce("debounce:a", {
    HF_COUNT: "5",
    HF_EVERY_MS: "250",
    HF_DEBOUNCE: "1500 milliseconds",
    HF_MAX_WAIT: "1 minute",
  });
  expect(events).toHaveLength(10);
  const ids = new Set(events.map((e) => e.id));
  expect(ids.size).toBe(1);
  const id = Number(events[0]?.id);
  const lastEnqueue = Math.max(...events.map((e) => e.at));
  const run = await startOf(id);
  const row = await taskRow(id);
  // Pushed by every request: not before 1.5 s after the latest one (its commit preceded `at`).
  expect(row?.run_at.getTime()).toBeGreaterThan(lastEnqueue + 1_500 - 250);
  // No early start: the worker's timer followed the pushes.
  expect(run.at).toBeGreaterThanOrEqual(row?.run_at.getTime() ?? Number.POSITIVE_INFINITY);
  expect(run.task.payload).toEqual({ p1: 5, p2: 5 });
});

it("maxWait bounds the pushes: a task asked for continuously starts at first enqueue + maxWait, and later requests make one follow-up", async () => {
  const events = await produce("debounce:b", {
    HF_COUNT: "20",
    HF_EVERY_MS: "200",
    HF_DEBOUNCE: "1 second",
    HF_MAX_WAIT: "2 seconds",
  });
  const first = Math.min(...events.map((e) => Number(e.id)));
  const run = await startOf(first);
  const row = await taskRow(first);
  const waited = (row?.started_at.getTime() ?? 0) - (row?.created_at.getTime() ?? 0);
  expect(waited).toBeGreaterThanOrEqual(2_000);
  expect(waited).toBeLessThan(3_500);
  // It started while the requests kept coming; those after its start went to one follow-up.
  expect(run.at).toBeLessThan(Math.max(...events.map((e) => e.at)));
  const later = new Set(events.map((e) => Number(e.id)).filter((id) => id !== first));
  expect(later.size).toBeGreaterThanOrEqual(1);
});

it("debounce needs a dedupe key; maxWait needs debounce", async () => {
  await hf.defineKind("dream");
  await expect(hf.enqueue("dream", { key: "k", debounce: 1000 })).rejects.toBeInstanceOf(
    InvalidArgumentError,
  );
  await expect(
    hf.enqueue("dream", { key: "k", dedupeKey: "k", maxWait: 1000 }),
  ).rejects.toBeInstanceOf(InvalidArgumentError);
  await expect(
    db.pool.query("select holdfast.enqueue('dream', 'k', debounce => '1 second')"),
  ).rejects.toMatchObject({ code: "HF002" });
});

it("a pushed task moves its place in its key's order, as a delayed enqueue would", async () => {
  const a = await hf.enqueue("dream", { key: "place", dedupeKey: "a", debounce: "10 minutes" });
  const b = await hf.enqueue("dream", { key: "place", runAt: new Date(Date.now() + 15 * 60_000) });
  const head = async () =>
    Number(
      (await db.pool.query("select head_id from holdfast.keys where key = 'place'")).rows[0]
        .head_id,
    );
  expect(await head()).toBe(a.id);
  // Pushed past b's start: b comes first now.
  const again = await hf.enqueue("dream", { key: "place", dedupeKey: "a", debounce: "20 minutes" });
  expect(again).toEqual({ id: a.id, deduped: true });
  expect(await head()).toBe(b.id);
});
