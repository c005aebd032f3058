// Runs the deriver example: `DATABASE_URL=postgres://… npx tsx examples/deriver/main.ts`
// (without DATABASE_URL it starts an embedded Postgres). Two workers, three chat sessions,
// messages arriving for about 3 seconds; prints a JSON summary on the last line.
import { pino } from "pino";
import { Holdfast } from "../../src/index.js";
import { startEmbedded } from "../../test/support/postgres.js";
import { deriverWorker, onMessage, setupDeriver } from "./deriver.js";

const embedded = process.env.DATABASE_URL ? undefined : await startEmbedded();
const url = process.env.DATABASE_URL ?? embedded?.url ?? "";
const dreamInterval = process.env.DERIVER_DREAM_INTERVAL ?? "1 second";
const logger = pino({ level: process.env.HF_LOG ?? "warn" });

const hf = new Holdfast({ connectionString: url, logger });
await hf.migrate();
await setupDeriver(hf, { dreamInterval });
const workers = [1, 2].map((i) => deriverWorker(hf, { name: `deriver-${i}`, dreamInterval }));
await Promise.all(workers.map((w) => w.start()));

const sessions = ["s1", "s2", "s3"];
const perSession = 20;
// Messages arrive in bursts of 5 per session, 750 ms apart.
for (let i = 0; i < perSession; i++) {
  if (i > 0 && i % 5 === 0) await new Promise((r) => setTimeout(r, 750));
  for (const session of sessions) {
    await onMessage(hf, {
      workspace: "ws",
      session,
      observer: "alice",
      observed: session === "s3" ? "bob" : "alice",
      messageId: i,
      text: `message ${i} of ${session}`,
    });
  }
}

// Wait until every representation is done and no dream is waiting or running.
for (;;) {
  const { rows } = await hf.pool.query(
    "select count(*)::int as n from holdfast.tasks where state in ('pending', 'running')",
  );
  if (rows[0].n === 0) break;
  await new Promise((r) => setTimeout(r, 100));
}
const observations = await hf.pool.query(
  "select session, array_agg(message_id order by id) as ids from deriver_observations group by 1 order by 1",
);
const dreams = await hf.pool.query(
  "select key, started_at, finished_at, observations from deriver_dreams order by key, started_at",
);
const batches = await hf.pool.query(
  "select count(distinct fence)::int as n from holdfast.tasks where kind = 'representation'",
);
await hf.close();
await embedded?.stop();
console.log(
  JSON.stringify({
    messages: sessions.length * perSession,
    representationBatches: batches.rows[0].n,
    observations: Object.fromEntries(observations.rows.map((r) => [r.session, r.ids])),
    dreams: dreams.rows,
  }),
);
