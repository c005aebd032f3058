import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, expect, it } from "vitest";
import { freshDatabase, type TestDatabase } from "./support/db.js";

let db: TestDatabase;

beforeAll(async () => {
  db = await freshDatabase();
});

afterAll(async () => {
  await db.drop();
});

const main = fileURLToPath(new URL("../examples/deriver/main.ts", import.meta.url));

interface Summary {
  messages: number;
  representationBatches: number;
  observations: Record<string, number[]>;
  dreams: Array<{ key: string; started_at: string; finished_at: string }>;
  maintenance: { runs: number; ticks: number };
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
  // The per-second maintenance schedule ran once per tick while the example ran.
  expect(summary.maintenance.ticks).toBeGreaterThanOrEqual(1);
  expect(summary.maintenance.runs).toBe(summary.maintenance.ticks);
});
