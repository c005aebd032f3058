import { expect, it } from "vitest";
import { Holdfast } from "../src/index.js";
import { silent } from "./support/db.js";
import { useWorkerProcesses } from "./support/processes.js";
import { overlaps, type RunRow } from "./support/runs.js";
import { until } from "./support/wait.js";

const t = useWorkerProcesses();

// Guarantees 2 and 6 together: the deriver's case, a dream asked for during a dream.
it("SIGKILL with a follow-up queued on the key: the killed task restarts first, within 1 s, and the follow-up runs after it", async () => {
  const procs = await Promise.all(["a", "b", "c"].map((n) => t.start(n, { HF_CONCURRENCY: "2" })));
  const hf = new Holdfast({ pool: t.db.pool, logger: silent });
  const key = "ws/8598510674/hermes";
  const { id: dream1 } = await hf.enqueue("job", { key, payload: { ms: 3_000 } });
  const { id: dream2 } = await hf.enqueue("job", { key, payload: { ms: 200 } });
  const others = [
    (await hf.enqueue("job", { key: "ws/hermes/hermes", payload: { ms: 3_000 } })).id,
  ];
  for (let i = 0; i < 4; i++) {
    others.push((await hf.enqueue("job", { key: `short:${i}`, payload: { ms: 50 } })).id);
  }

  const first = await Promise.race(
    procs.map((p) => p.waitFor((e) => e.event === "start" && e.id === dream1)),
  );
  const victim = procs.find((p) => p.name === first.worker);
  if (!victim) throw new Error(`no process named ${first.worker}`);
  await new Promise((r) => setTimeout(r, 1_500));
  const killedAt = Date.now();
  await victim.kill("SIGKILL");
  const survivors = procs.filter((p) => p !== victim);

  const restart = await Promise.race(
    survivors.map((p) =>
      p.waitFor((e) => e.event === "start" && e.id === dream1 && e.attempt === 2),
    ),
  );
  const takeoverMs = restart.at - killedAt;
  console.log(`takeover with a follow-up queued: ${takeoverMs} ms`);
  expect(takeoverMs).toBeLessThan(1_000);

  const follow = await Promise.race(
    survivors.map((p) => p.waitFor((e) => e.event === "start" && e.id === dream2, 20_000)),
  );
  // The follow-up never started before the restarted dream, nor on the killed process.
  expect(victim.events.some((e) => e.event === "start" && e.id === dream2)).toBe(false);
  const dream1End = await Promise.race(
    survivors.map((p) => p.waitFor((e) => e.event === "end" && e.id === dream1 && e.attempt === 2)),
  );
  expect(follow.at).toBeGreaterThanOrEqual(dream1End.at);

  // Every task ends exactly once, succeeded; runs of a key never overlapped.
  const all = [dream1, dream2, ...others];
  await until(async () => {
    const { rows } = await t.db.pool.query(
      "select count(*)::int as n from holdfast.tasks where id = any ($1) and state = 'succeeded'",
      [all],
    );
    return rows[0].n === all.length ? true : undefined;
  }, 20_000);
  // The only attempts that did not succeed are the killed process's runs (dream1 among them).
  const { rows: attempts } = await t.db.pool.query(
    "select task_id::int, outcome, worker from holdfast.attempts where task_id = any ($1) and outcome <> 'succeeded'",
    [all],
  );
  expect(attempts).toContainEqual({ task_id: dream1, outcome: "lost", worker: victim.name });
  for (const a of attempts) expect(a).toMatchObject({ outcome: "lost", worker: victim.name });
  const { rows: runs } = await t.db.pool.query<RunRow>("select * from runs");
  expect(overlaps(runs, () => killedAt)).toEqual([]);
});
