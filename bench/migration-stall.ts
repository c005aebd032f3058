// How long an enqueue waits while `migrate()` upgrades a live database: `tsx
// bench/migration-stall.ts [--from 25540ad] [--tasks 1000000]`. The release to upgrade from is
// extracted with git archive and migrates a fresh database; `--tasks` finished tasks are
// inserted (as pruning would find them, without running them); then this release's migrate()
// runs while another session enqueues every 20 ms. Prints the table row of docs/upgrading.md.
import pg from "pg";
import { pino } from "pino";
import { Holdfast } from "../src/index.js";
import { extractRelease, migrateWith } from "../test/fixtures/releases.js";
import { startEmbedded } from "../test/support/postgres.js";

const args = process.argv.slice(2);
const arg = (name: string, fallback: string) =>
  args.includes(name) ? (args[args.indexOf(name) + 1] ?? fallback) : fallback;
const from = arg("--from", "25540ad");
const tasks = Number(arg("--tasks", "1000000"));

const server = await startEmbedded();
const release = await extractRelease(from);
try {
  await migrateWith(release, server.url);
  const c = new pg.Client({ connectionString: server.url });
  await c.connect();
  await c.query("select holdfast.define_kind('job')");
  // Finished tasks on distinct keys, in batches (the key rows first: tasks reference them).
  for (let done = 0; done < tasks; done += 100_000) {
    const n = Math.min(100_000, tasks - done);
    await c.query(
      `insert into holdfast.keys (key, lock_id)
       select 'k' || i, holdfast.lock_id('k' || i) from generate_series($1::int, $2::int) i`,
      [done, done + n - 1],
    );
    await c.query(
      `insert into holdfast.tasks (kind, key, state, attempt, max_attempts, fence, started_at,
                                   finished_at)
       select 'job', 'k' || i, 'succeeded', 1, 5, i, now(), now()
       from generate_series($1::int, $2::int) i`,
      [done, done + n - 1],
    );
  }
  await c.query("vacuum analyze");
  const size = await c.query<{ mb: number }>(
    "select (pg_total_relation_size('holdfast.tasks') / 1048576)::int as mb",
  );
  let longest = 0;
  let stop = false;
  const producer = (async () => {
    const p = new pg.Client({ connectionString: server.url });
    await p.connect();
    for (let i = 0; !stop; i++) {
      const t0 = performance.now();
      await p.query("select holdfast.enqueue('job', $1)", [`live:${i}`]);
      longest = Math.max(longest, performance.now() - t0);
      await new Promise((r) => setTimeout(r, 20));
    }
    await p.end();
  })();
  await new Promise((r) => setTimeout(r, 500));
  const hf = new Holdfast({ connectionString: server.url, logger: pino({ level: "silent" }) });
  const t0 = performance.now();
  const result = await hf.migrate();
  const took = performance.now() - t0;
  await new Promise((r) => setTimeout(r, 500));
  stop = true;
  await producer;
  await hf.close();
  await c.end();
  process.stdout.write(
    `| ${from} | ${tasks.toLocaleString("en-US")} | ${size.rows[0]?.mb} MB | ${(took / 1000).toFixed(2)} s | ${(longest / 1000).toFixed(2)} s |\n`,
  );
  process.stderr.write(`${JSON.stringify(result)}\n`);
} finally {
  await release.remove();
  await server.stop();
}
