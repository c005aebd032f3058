// Failover: a primary with a synchronous streaming standby, worker processes on an endpoint
// that follows the primary. The primary's postmaster is SIGKILLed with tasks running, the
// standby promoted and the endpoint repointed, as a provider's failover does. Advisory locks
// are not replicated: every holder must abort and report nothing, and the new primary must
// end every task exactly once. Run records live in files, outside the database that fails over.
import { type ChildProcess, spawn } from "node:child_process";
import { chmod, mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { afterAll, beforeAll, expect, it } from "vitest";
import { Holdfast, type Task } from "../src/index.js";
import { freshDatabase, silent, withDatabase } from "./support/db.js";
import { collectJsonLines } from "./support/json-lines.js";
import { overlaps } from "./support/runs.js";
import { type StreamingPair, startStreamingPair } from "./support/standby.js";
import { startProxy, type TcpProxy } from "./support/tcp-proxy.js";
import { abortableSleep, until } from "./support/wait.js";

const fixture = fileURLToPath(new URL("./fixtures/failover-worker.ts", import.meta.url));

/** A line of a worker's run log or stdout (test/fixtures/failover-worker.ts). */
interface Line {
  event: string;
  worker: string;
  at: number;
  id?: number;
  key?: string;
  attempt?: number;
  fence?: number;
  outcome?: string;
}

interface WorkerChild {
  child: ChildProcess;
  lines: Line[];
  runLog: string;
}

let pair: StreamingPair;
let endpoint: TcpProxy;
let dir: string;
const workers: WorkerChild[] = [];

async function startWorker(url: string, name: string): Promise<WorkerChild> {
  const runLog = path.join(dir, `${name}.jsonl`);
  const child = spawn(process.execPath, ["--import", "tsx", fixture], {
    env: {
      ...process.env,
      DATABASE_URL: url,
      HF_NAME: name,
      HF_CONCURRENCY: "2",
      HF_RUN_LOG: runLog,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const w = { child, runLog, ...collectJsonLines<Line>(child, `worker ${name}`) };
  workers.push(w);
  await w.waitFor((l) => l.event === "ready", 60_000);
  return w;
}

/** Every run record the workers wrote, in one list. */
async function runLogs(): Promise<Line[]> {
  const texts = await Promise.all(workers.map((w) => readFile(w.runLog, "utf8").catch(() => "")));
  return texts.flatMap((t) =>
    t
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Line),
  );
}

const said = (event: string): Line[] =>
  workers.flatMap((w) => w.lines.filter((l) => l.event === event));
const sameRun = (a: Line, b: Line) =>
  a.id === b.id && a.attempt === b.attempt && a.fence === b.fence;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), "holdfast-failover-"));
  await chmod(dir, 0o777);
  pair = await startStreamingPair({ synchronous: true });
  const admin = new pg.Client({ connectionString: pair.primary.url });
  await admin.connect();
  await admin.query("create database failover");
  await admin.end();
  endpoint = await startProxy(withDatabase(pair.primary.url, "failover"));
  const hf = new Holdfast({ connectionString: endpoint.url, logger: silent });
  await hf.migrate();
  await hf.close();
}, 60_000);

afterAll(async () => {
  for (const w of workers) w.child.kill("SIGKILL");
  await endpoint?.close();
  await pair?.stop();
  await rm(dir, { recursive: true, force: true });
});

it("after the primary dies and the synchronous standby is promoted, every holder aborted and every task ends exactly once, no key overlapping", async () => {
  await Promise.all(["w1", "w2", "w3"].map((name) => startWorker(endpoint.url, name)));
  // Two tasks on each of six keys, 0.4 to 3 s: six slots run every key's first task; the
  // short ones end and their keys' second tasks start; the primary dies with most keys mid-run.
  const first = [400, 2_500, 700, 3_000, 1_000, 2_000];
  const second = [1_800, 600, 2_200, 400, 1_500, 900];
  const producer = new Holdfast({ connectionString: endpoint.url, logger: silent });
  const ids: number[] = [];
  for (const ms of [...first, ...second]) {
    const key = `failover:${ids.length % first.length}`;
    ids.push((await producer.enqueue("job", { key, payload: { ms } })).id);
  }
  await producer.close();

  const inFlight = () => {
    const closed = [...said("run:end"), ...said("run:aborted")];
    return said("run:start").filter((s) => !closed.some((c) => sameRun(c, s)));
  };
  await until(
    () =>
      said("reported").filter((r) => r.outcome === "succeeded").length >= 3 &&
      inFlight().length >= 3,
    30_000,
    "three tasks succeeded and three running",
    5,
  );
  const killedAt = Date.now();
  await pair.primary.kill("SIGKILL");
  // The runs the kill cut: started before it and neither ended nor aborted before it (from
  // the run logs, written before a line reaches stdout).
  const before = (await runLogs()).filter((l) => l.at < killedAt);
  const cut = before.filter(
    (s) => s.event === "run:start" && !before.some((c) => c.event !== "run:start" && sameRun(c, s)),
  );
  const succeededBefore = said("reported").filter(
    (r) => r.outcome === "succeeded" && r.at < killedAt,
  );

  // Every holder notices on its own: its lock session died with the server.
  await until(
    () => cut.every((r) => said("run:aborted").some((a) => sameRun(a, r))),
    10_000,
    "every in-flight run aborted",
    5,
  );
  const abortedWithinMs = Math.max(...said("run:aborted").map((a) => a.at)) - killedAt;

  const promoteAt = Date.now();
  await pair.promote();
  const promotedAt = Date.now();
  endpoint.retarget(pair.standby.url);

  // The new primary's view, on one session (ended before the server stops in afterAll).
  const fresh = new pg.Client({ connectionString: withDatabase(pair.standby.url, "failover") });
  fresh.on("error", () => {});
  await fresh.connect();
  try {
    await until(
      async () => {
        const { rows } = await fresh.query<{ n: number }>(
          "select count(*)::int as n from holdfast.tasks where state = 'succeeded'",
        );
        return rows[0]?.n === ids.length;
      },
      30_000,
      "every task succeeded on the new primary",
      50,
    );
    const doneAt = Date.now();
    const runs = await runLogs();
    const starts = runs.filter((r) => r.event === "run:start");
    // Takeover: when each cut task started again, after the promotion and the repoint.
    const takeoverMs = cut.map(
      (r) =>
        Math.min(...starts.filter((s) => s.id === r.id && s.at > killedAt).map((s) => s.at)) -
        promotedAt,
    );
    const reconnectMs = said("lock:reconnected")
      .filter((l) => l.at > promotedAt)
      .map((l) => l.at - promotedAt);
    console.log(
      `failover: ${cut.length} in-flight runs aborted within ${abortedWithinMs} ms of the SIGKILL; ` +
        `promotion took ${promotedAt - promoteAt} ms; lock sessions back ` +
        `${Math.min(...reconnectMs)}–${Math.max(...reconnectMs)} ms after it; the cut tasks restarted ` +
        `${Math.min(...takeoverMs)}–${Math.max(...takeoverMs)} ms after it; all ${ids.length} tasks ` +
        `succeeded ${doneAt - promotedAt} ms after it`,
    );

    // The cut runs: their signal fired, they never ended and nothing of theirs was reported.
    expect(cut.length).toBeGreaterThanOrEqual(3);
    for (const r of cut) {
      expect(runs.filter((l) => sameRun(l, r)).map((l) => l.event)).toEqual([
        "run:start",
        "run:aborted",
      ]);
      expect(said("reported").filter((l) => sameRun(l, r))).toEqual([
        expect.objectContaining({ outcome: "lost" }),
      ]);
    }

    // As the new primary sees it: one succeeded attempt per task, a run that worked to its
    // end; every other attempt lost. A cut run is a lost attempt there, or no attempt at all:
    // claims commit asynchronously (sql/api/40_claim.sql), so one made in the last moments
    // before the crash may not have reached the standby, and the task runs again under the
    // same attempt number (and a newer fence).
    const { rows: attempts } = await fresh.query<{
      task_id: string;
      attempt: number;
      fence: string;
      outcome: string | null;
    }>("select task_id, attempt, fence, outcome from holdfast.attempts order by task_id, attempt");
    const attemptOf = (r: Line) =>
      attempts.find((a) => Number(a.task_id) === r.id && a.fence === String(r.fence));
    for (const id of ids) {
      const mine = attempts.filter((a) => Number(a.task_id) === id);
      const ok = mine.filter((a) => a.outcome === "succeeded");
      expect(ok, `task ${id}`).toHaveLength(1);
      expect(mine.filter((a) => a.outcome !== "succeeded").map((a) => a.outcome)).toEqual(
        mine.filter((a) => a.outcome !== "succeeded").map(() => "lost"),
      );
      const end = runs.find((r) => r.event === "run:end" && r.id === id && attemptOf(r) === ok[0]);
      expect(end, `task ${id}: its succeeded attempt ran to its end`).toBeDefined();
    }
    const unrecorded = cut.filter((r) => attemptOf(r) === undefined);
    for (const r of cut) expect(attemptOf(r)?.outcome ?? "unrecorded").not.toBe("succeeded");
    console.log(
      `failover: ${cut.length - unrecorded.length} cut runs recorded as lost attempts, ` +
        `${unrecorded.length} claimed too late to reach the standby`,
    );
    // Synchronous replication: a completion the old primary acknowledged is on the new one,
    // so no acknowledged task ran again.
    for (const s of succeededBefore) {
      expect(starts.filter((r) => r.id === s.id).map((r) => r.attempt)).toEqual([s.attempt]);
    }

    // Every run ended or was aborted; no two runs of a key overlapped, and a key's second task
    // started only after its first one's succeeded run ended.
    const intervals = starts.map((s) => {
      const close = runs.find((l) => l.event !== "run:start" && sameRun(l, s));
      return {
        ...s,
        key: s.key ?? "",
        started_at: new Date(s.at),
        ended_at: close ? new Date(close.at) : null,
      };
    });
    expect(intervals.filter((i) => i.ended_at === null)).toEqual([]);
    expect(overlaps(intervals)).toEqual([]);
    for (let k = 0; k < first.length; k++) {
      const [a, b] = [ids[k], ids[k + first.length]];
      const aEnd = Math.max(
        ...runs.filter((r) => r.id === a && r.event === "run:end").map((r) => r.at),
      );
      expect(starts.filter((r) => r.id === b).every((r) => r.at >= aEnd)).toBe(true);
    }
  } finally {
    await fresh.end();
  }
});

it("with asynchronous replication, a completion the standby never received runs again after the failover, under a newer fence", async () => {
  // The standby streams through a proxy the test cuts: what the primary commits after the cut
  // is acknowledged to the worker but never reaches the standby.
  const lagging = await startStreamingPair({ synchronous: false, replicationProxy: true });
  const front = await startProxy(withDatabase(lagging.primary.url, "postgres"));
  const hf = new Holdfast({ connectionString: front.url, logger: silent });
  const runs: Array<{ task: Task; startedAt: number; endedAt?: number }> = [];
  const outcomes: string[] = [];
  try {
    await hf.migrate();
    const worker = hf.worker({
      name: "async",
      handlers: {
        job: async (task: Task<{ ms: number }>, ctx) => {
          const run: (typeof runs)[number] = { task, startedAt: Date.now() };
          runs.push(run);
          await abortableSleep(task.payload.ms, ctx.signal);
          run.endedAt = Date.now();
        },
      },
    });
    worker.on("task:end", (_t, r) => outcomes.push(r.outcome));
    await worker.start();
    const { id } = await hf.enqueue("job", { key: "async:0", payload: { ms: 500 } });
    await until(() => runs.length === 1, 20_000, "the run started", 5);
    await lagging.caughtUp(); // the claim is on the standby; its completion will not be
    lagging.replication?.partition();
    await until(() => outcomes.includes("succeeded"), 20_000, "the completion acknowledged", 5);

    await lagging.primary.kill("SIGKILL");
    await lagging.promote();
    front.retarget(lagging.standby.url);
    await until(() => runs[1]?.endedAt !== undefined, 30_000, "the task ran again", 20);
    await until(() => outcomes.filter((o) => o === "succeeded").length === 2, 10_000, "reported");

    const fresh = new pg.Client({ connectionString: lagging.standby.url });
    fresh.on("error", () => {});
    await fresh.connect();
    const { rows } = await fresh.query<{ attempt: number; outcome: string }>(
      "select attempt, outcome from holdfast.attempts where task_id = $1 order by attempt",
      [id],
    );
    await fresh.end();
    expect(rows).toEqual([
      { attempt: 1, outcome: "lost" },
      { attempt: 2, outcome: "succeeded" },
    ]);
    const [a, b] = runs;
    expect(Number(b?.task.fence)).toBeGreaterThan(Number(a?.task.fence));
    expect(b?.startedAt).toBeGreaterThan(a?.endedAt ?? Number.POSITIVE_INFINITY);
  } finally {
    await hf.close();
    await front.close();
    await lagging.stop();
  }
});

it("a claim answered in the same read as the end of its session (a dying server's last words) starts no handler", async () => {
  // A backend that answers a claim and then finds its postmaster gone (or is terminated)
  // sends the answer and a FATAL back to back; a client that reads both at once sees the
  // claim resolve after the session was already lost and its handlers aborted.
  const db = await freshDatabase();
  const front = await startProxy(db.url);
  const direct = new Holdfast({ connectionString: db.url, logger: silent });
  const hf = new Holdfast({ connectionString: front.url, logger: silent });
  const started: Task[] = [];
  const ended: Array<{ task: Task; aborted: boolean }> = [];
  try {
    // The sweep leader runs on a direct session, so the proxied lock session only claims.
    const leader = direct.worker({ name: "leader", handlers: { other: async () => {} } });
    const led = new Promise<void>((resolve) => leader.once("leader", () => resolve()));
    await leader.start();
    await led;
    const worker = hf.worker({
      name: "claimer",
      // No health probe while the answers are held.
      lockSession: { healthCheckIntervalMs: 3_000, healthCheckTimeoutMs: 5_000 },
      handlers: {
        job: async (task: Task<{ ms: number }>, ctx) => {
          started.push(task);
          await abortableSleep(task.payload.ms, ctx.signal).catch(() => {});
          ended.push({ task, aborted: ctx.signal.aborted });
        },
      },
    });
    await worker.start();
    const armed = new Promise<void>((resolve) =>
      worker.on("idle", ({ nextRunAt }) => nextRunAt && resolve()),
    );
    const runAt = new Date(Date.now() + 1_500);
    const { id } = await direct.enqueue("job", {
      key: "last-words",
      payload: { ms: 1_000 },
      runAt,
    });
    await armed; // the worker claims at runAt, on its timer
    front.hold("holdfast:lock:claimer"); // the lock session's answers only
    const { pid } = await until(
      async () =>
        (
          await db.pool.query<{ pid: number }>(
            "select holder_pid as pid from holdfast.tasks where id = $1 and state = 'running'",
            [id],
          )
        ).rows[0],
      10_000,
      "the claim committed (its answer held)",
      5,
    );
    const open = front.connections();
    await db.pool.query("select pg_terminate_backend($1)", [pid]);
    await until(() => front.connections() < open, 10_000, "the lock session's end held", 5);
    front.release();

    await until(() => ended.some((e) => !e.aborted), 20_000, "the task ran to its end", 20);
    await until(async () => {
      const r = await db.pool.query<{ state: string }>(
        "select state from holdfast.tasks where id = $1",
        [id],
      );
      return r.rows[0]?.state === "succeeded";
    });
    // The claim of the lost session ran nothing; the takeover (attempt 2) ran the task.
    expect(started.map((t) => t.attempt)).toEqual([2]);
    const { rows } = await db.pool.query<{ attempt: number; outcome: string }>(
      "select attempt, outcome from holdfast.attempts where task_id = $1 order by attempt",
      [id],
    );
    expect(rows).toEqual([
      { attempt: 1, outcome: "lost" },
      { attempt: 2, outcome: "succeeded" },
    ]);
  } finally {
    await hf.close();
    await direct.close();
    await front.close();
    await db.drop();
  }
});
