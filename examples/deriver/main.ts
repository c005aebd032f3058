// Runs the deriver example: `DATABASE_URL=postgres://… npx tsx examples/deriver/main.ts`
// (without DATABASE_URL it starts an embedded Postgres). Two workers, three chat sessions,
// messages arriving for about 3 seconds; prints a JSON summary on the last line. Times are
// scaled down (production: dreams 8 hours apart, debounced 10 minutes, at most 2 hours).
import { pino } from "pino";
import { Holdfast } from "../../src/index.js";
import { startEmbedded } from "../../test/support/postgres.js";
import {
  type DeriverSettings,
  deriverWorker,
  onMessage,
  setupDeriver,
  tokenLimit,
} from "./deriver.js";

const embedded = process.env.DATABASE_URL ? undefined : await startEmbedded();
const url = process.env.DATABASE_URL ?? embedded?.url ?? "";
const settings: DeriverSettings = {
  dreamInterval: process.env.DERIVER_DREAM_INTERVAL ?? "1 second",
  maxDreams: Number(process.env.DERIVER_MAX_DREAMS ?? 1),
  dreamDebounce: process.env.DERIVER_DREAM_DEBOUNCE ?? "300 milliseconds",
  dreamMaxWait: process.env.DERIVER_DREAM_MAX_WAIT ?? "2 seconds",
  // Every second here, to see it run; a deriver would say "0 3 * * *".
  maintenanceCron: process.env.DERIVER_MAINTENANCE_CRON ?? "* * * * * *",
};
const logger = pino({ level: process.env.HF_LOG ?? "warn" });

const hf = new Holdfast({ connectionString: url, logger });
await hf.migrate();
await setupDeriver(hf, settings);
const workers = [1, 2].map((i) => deriverWorker(hf, { name: `deriver-${i}` }));
await Promise.all(workers.map((w) => w.start()));

const sessions = ["s1", "s2", "s3"];
const perSession = 20;
// Messages arrive in bursts of 5 per session, 750 ms apart.
for (let i = 0; i < perSession; i++) {
  if (i > 0 && i % 5 === 0) await new Promise((r) => setTimeout(r, 750));
  for (const session of sessions) {
    await onMessage(
      hf,
      {
        workspace: "ws",
        session,
        observer: "alice",
        observed: session === "s3" ? "bob" : "alice",
        messageId: i,
        text: `message ${i} of ${session}`,
      },
      settings,
    );
  }
}

// Wait until every representation is done and no dream is waiting or running.
await hf.unschedule("nightly-maintenance");
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
const maintenance = await hf.pool.query(
  "select count(*)::int as runs, count(distinct tick)::int as ticks from deriver_maintenance",
);
const tokens = (await hf.limits()).find((l) => l.name === tokenLimit);
await hf.close();
await embedded?.stop();
console.log(
  JSON.stringify({
    messages: sessions.length * perSession,
    representationBatches: batches.rows[0].n,
    observations: Object.fromEntries(observations.rows.map((r) => [r.session, r.ids])),
    dreams: dreams.rows,
    maintenance: maintenance.rows[0],
    // The token limit's window: what the dreams' model calls were charged, and what is still
    // only reserved (nothing, once every dream has charged its calls).
    tokens: { charged: tokens?.charged ?? 0, reserved: tokens?.reserved ?? 0 },
  }),
);
