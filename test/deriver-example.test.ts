import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, expect, it } from "vitest";
import { type DreamCheckpoint, dreamKey, setupDeriver } from "../examples/deriver/deriver.js";
import { Holdfast } from "../src/index.js";
import { freshDatabase, silent, type TestDatabase } from "./support/db.js";
import { collectJsonLines } from "./support/json-lines.js";
import { until } from "./support/wait.js";

let db: TestDatabase;
const children: ChildProcess[] = [];

beforeAll(async () => {
  db = await freshDatabase();
});

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  await db.drop();
});

const main = fileURLToPath(new URL("../examples/deriver/main.ts", import.meta.url));

interface Summary {
  messages: number;
  representationBatches: number;
  observations: Record<string, number[]>;
  dreams: Array<{ key: string; started_at: string; finished_at: string }>;
  maintenance: { runs: number; ticks: number };
  tokens: { charged: number; reserved: number };
}

function run(env: Record<string, string>): Promise<Summary> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", main], {
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => {
      out += String(d);
    });
    child.stderr.on("data", (d) => {
      err += String(d);
    });
    child.on("exit", (code) => {
      if (code !== 0) return reject(new Error(`example exited ${code}: ${err.slice(-2000)}`));
      resolve(JSON.parse(out.trim().split("\n").at(-1) ?? "{}") as Summary);
    });
  });
}

it("examples/deriver runs: ordered batched representations, debounced dreams at least the interval apart and one at a time, maintenance once per tick", async () => {
  const summary = await run({ DATABASE_URL: db.url, DERIVER_DREAM_INTERVAL: "1 second" });
  const inOrder = [...Array(20).keys()];
  expect(summary.observations).toEqual({ s1: inOrder, s2: inOrder, s3: inOrder });
  // Messages that arrived while a batch ran were taken together.
  expect(summary.representationBatches).toBeLessThan(summary.messages);
  for (const key of ["dream:ws:alice:alice", "dream:ws:alice:bob"]) {
    const dreams = summary.dreams.filter((d) => d.key === key);
    // 60 dream requests over ~3 s collapse to a handful of dreams, one at a time per peer.
    expect(dreams.length).toBeGreaterThanOrEqual(1);
    expect(dreams.length).toBeLessThanOrEqual(6);
    for (let i = 1; i < dreams.length; i++) {
      const gap =
        Date.parse(dreams[i]?.started_at ?? "") - Date.parse(dreams[i - 1]?.finished_at ?? "");
      expect(gap).toBeGreaterThanOrEqual(990);
    }
  }
  // At most one dream at once across both workers and both peers (maxRunning 1).
  const all = [...summary.dreams].sort(
    (a, b) => Date.parse(a.started_at) - Date.parse(b.started_at),
  );
  for (let i = 1; i < all.length; i++)
    expect(Date.parse(all[i]?.started_at ?? "")).toBeGreaterThanOrEqual(
      Date.parse(all[i - 1]?.finished_at ?? ""),
    );
  // Every dream charged its model calls' tokens on the limit (400 + 120 per observation each):
  // no reservation is left standing in for a cost.
  expect(summary.tokens.reserved).toBe(0);
  expect(summary.tokens.charged).toBeGreaterThanOrEqual(400 + 120);
  // The per-second maintenance schedule ran once per tick while the example ran.
  expect(summary.maintenance.ticks).toBeGreaterThanOrEqual(1);
  expect(summary.maintenance.runs).toBe(summary.maintenance.ticks);
});

const workerScript = fileURLToPath(new URL("../examples/deriver/worker.ts", import.meta.url));

interface WorkerLine {
  event: string;
  worker: string;
  id?: number;
  attempt?: number;
  checkpoint?: DreamCheckpoint | null;
}

function startWorker(name: string, url: string) {
  const child = spawn(process.execPath, ["--import", "tsx", workerScript], {
    env: {
      ...process.env,
      DATABASE_URL: url,
      HF_NAME: name,
      DERIVER_DREAM_MS: "250",
      DERIVER_DREAM_BATCH: "5",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  return { name, child, exited, ...collectJsonLines<WorkerLine>(child, name) };
}

it("a dream SIGKILLed mid-run is taken over and continues from the next batch: no observation consolidated twice", async () => {
  const second = await freshDatabase();
  try {
    const hf = new Holdfast({ pool: second.pool, logger: silent });
    await setupDeriver(hf, {
      dreamInterval: "0 seconds",
      maxDreams: 1,
      dreamDebounce: "0 seconds",
      dreamMaxWait: "1 hour",
      maintenanceCron: "0 3 * * *",
    });
    // 40 observations of bob: 8 batches of 5, 250 ms of "model time" each.
    await second.pool.query(
      `insert into deriver_observations (workspace, session, observed, message_id, text, fence)
       select 'ws', 's1', 'bob', i, 'observed: ' || i, 0 from generate_series(1, 40) i`,
    );
    const workers = [startWorker("d1", second.url), startWorker("d2", second.url)];
    await Promise.all(workers.map((w) => w.waitFor((l) => l.event === "ready", 60_000)));
    const payload = { workspace: "ws", observer: "bob", observed: "bob" };
    const { id } = await hf.enqueue("dream", { key: dreamKey(payload), payload });
    // Kill the dream's worker once it has checkpointed two batches.
    const holder = await until(async () => {
      const { rows } = await second.pool.query(
        "select worker, checkpoint from holdfast.tasks where id = $1 and state = 'running'",
        [id],
      );
      return (rows[0]?.checkpoint?.batches ?? 0) >= 2 ? (rows[0].worker as string) : undefined;
    });
    const victim = workers.find((w) => w.name === holder);
    const survivor = workers.find((w) => w.name !== holder);
    if (!victim || !survivor) throw new Error(`unknown holder ${holder}`);
    victim.child.kill("SIGKILL");
    await victim.exited;

    const resumed = await survivor.waitFor(
      (l) => l.event === "start" && l.id === id && l.attempt === 2,
      10_000,
    );
    await until(async () => {
      const { rows } = await second.pool.query("select state from holdfast.tasks where id = $1", [
        id,
      ]);
      return rows[0]?.state === "succeeded";
    });
    const { rows } = await second.pool.query<{
      observation_id: string;
      batch: number;
      fence: string;
    }>(
      "select observation_id, batch, fence from deriver_consolidated where dream_task = $1 order by at",
      [id],
    );
    const ids = rows.map((r) => Number(r.observation_id));
    expect(new Set(ids).size).toBe(ids.length); // none twice
    expect(ids.length).toBe(40); // and none left out
    const fences = [...new Set(rows.map((r) => r.fence))];
    expect(fences).toHaveLength(2);
    const before = rows.filter((r) => r.fence === fences[0]);
    const after = rows.filter((r) => r.fence === fences[1]);
    // The killed attempt's committed batches, then the takeover's, continuing with the next.
    const lastBefore = Math.max(...before.map((r) => r.batch));
    expect(before.length).toBe(lastBefore * 5);
    expect(resumed.checkpoint).toMatchObject({ batches: lastBefore, done: lastBefore * 5 });
    expect(Math.min(...after.map((r) => r.batch))).toBe(lastBefore + 1);
    const { rows: dreams } = await second.pool.query(
      "select observations, fence::text as fence from deriver_dreams where key = $1",
      [dreamKey(payload)],
    );
    expect(dreams).toEqual([{ observations: 40, fence: fences[1] }]);
    console.log(
      `deriver dream: SIGKILL after ${lastBefore} of 8 batches; the takeover did batches ${lastBefore + 1}-8, repeating ${ids.length - new Set(ids).size}`,
    );
    for (const w of workers) w.child.kill("SIGTERM");
    await Promise.all(workers.map((w) => w.exited));
    await hf.close();
  } finally {
    await second.drop();
  }
});
