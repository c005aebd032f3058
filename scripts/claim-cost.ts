// Claim latency against the number of pending tasks (the ready-key head design keeps it flat):
// `npx tsx scripts/claim-cost.ts [1000,100000,1000000]` on a private embedded Postgres. Half
// the tasks are spread over 1,000 keys, half sit on one hot batch key.
import pg from "pg";
import { pino } from "pino";
import { Holdfast } from "../src/index.js";
import { startEmbedded } from "../test/support/postgres.js";

const server = await startEmbedded(["-c", "fsync=off"]);
const hf = new Holdfast({ connectionString: server.url, logger: pino({ level: "silent" }) });
await hf.migrate();
await hf.defineKind("job");
await hf.defineKind("batch", { batch: { max: 10 } });
const c = new pg.Client({ connectionString: server.url });
await c.connect();
let have = 0;
const targets = (process.argv[2] ?? "1000,100000,1000000").split(",").map(Number);
for (const target of targets) {
  const t0 = Date.now();
  while (have < target) {
    const n = Math.min(50_000, target - have);
    // half on 1,000 keys, half on one hot batch key
    await c.query(
      "select holdfast.enqueue(case when g % 2 = 0 then 'job' else 'batch' end, case when g % 2 = 0 then 'k' || (g % 1000) else 'hot' end) from generate_series($1::int, $1::int + $2 - 1) g",
      [have, n],
    );
    have += n;
  }
  await c.query("analyze holdfast.tasks; analyze holdfast.keys");
  const fill = Date.now() - t0;
  const times: number[] = [];
  for (let i = 0; i < 200; i++) {
    const s = performance.now();
    const { rows } = await c.query(
      "select * from holdfast.claim(array['job','batch'], 'm', 10, 1)",
    );
    times.push(performance.now() - s);
    for (const r of rows) await c.query("select holdfast.complete($1, $2)", [r.id, r.fence]);
  }
  times.sort((a, b) => a - b);
  console.log(
    JSON.stringify({
      pending: target,
      fillMs: fill,
      claimP50: times[100]?.toFixed(2),
      claimP95: times[190]?.toFixed(2),
    }),
  );
}
await c.end();
await hf.close();
await server.stop();
