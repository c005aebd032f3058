import { expect, it } from "vitest";
import { Holdfast } from "../src/index.js";
import { silent } from "./support/db.js";
import { useWorkerProcesses } from "./support/processes.js";

const t = useWorkerProcesses();

// Followers run nothing on the sweep timer: they learn that the leader is alive from the
// NOTIFY its sweeps send. When the leader dies, that heartbeat stops and one of them must take
// over the sweep, or an orphaned task would never be requeued.
it("when the sweep leader is SIGKILLed together with a task's holder, a follower becomes leader and the task restarts as attempt 2", async () => {
  const leader = await t.start("leader");
  await leader.waitFor((e) => e.event === "leader"); // alone in its database
  const followers = [await t.start("f1"), await t.start("f2"), await t.start("f3")];
  const hf = new Holdfast({ pool: t.db.pool, logger: silent });
  const { id } = await hf.enqueue("job", { key: "dream:ws:bob:bob", payload: { ms: 60_000 } });
  const all = [leader, ...followers];
  const first = await Promise.race(
    all.map((p) => p.waitFor((e) => e.event === "start" && e.id === id)),
  );
  const holder = all.find((p) => p.name === first.worker);
  const killed = new Set([leader, holder]);
  await Promise.all([...killed].map((p) => p?.kill("SIGKILL")));
  const survivors = all.filter((p) => !killed.has(p));

  const second = await Promise.race(
    survivors.map((p) =>
      p.waitFor((e) => e.event === "start" && e.id === id && e.attempt === 2, 10_000),
    ),
  );
  expect(survivors.map((p) => p.name)).toContain(second.worker);
  // The new leader's "leader" line and the restart's "start" line come through different
  // pipes: the first may arrive after the second.
  await Promise.race(survivors.map((p) => p.waitFor((e) => e.event === "leader", 5_000)));
  const elected = survivors.filter((p) => p.events.some((e) => e.event === "leader"));
  expect(elected).toHaveLength(1);
  const { rows } = await t.db.pool.query(
    "select attempt, outcome, worker from holdfast.attempts where task_id = $1 order by attempt",
    [id],
  );
  expect(rows).toEqual([
    expect.objectContaining({ attempt: 1, outcome: "lost", worker: first.worker }),
  ]);
});
