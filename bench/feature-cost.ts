import { performance } from "node:perf_hooks";
import pg from "pg";
import { pino } from "pino";
import { Holdfast } from "../src/index.js";
import { createDatabase, dropDatabase } from "./db.js";
import { type Summary, summarize } from "./stats.js";

export interface FeatureCostResult extends Summary {
  op: string;
  variant: string;
}

/**
 * What a concurrency cap and a debounce cost on the claim and enqueue paths, each beside the
 * same call without the feature, in one run on one session (round trip included):
 * - claim + complete of an uncapped kind, of a capped kind with room (a slot taken and freed),
 *   and of an uncapped kind asked together with a full capped kind that has ready keys;
 * - enqueue of a new task, a deduplicated enqueue, and a debounced one (its start pushed).
 */
export async function featureCost(adminUrl: string, samples: number): Promise<FeatureCostResult[]> {
  const url = await createDatabase(adminUrl, "featurecost");
  const hf = new Holdfast({ connectionString: url, logger: pino({ level: "silent" }) });
  await hf.migrate();
  const c = new pg.Client({ connectionString: url });
  const holder = new pg.Client({ connectionString: url });
  await c.connect();
  await holder.connect();
  const out: FeatureCostResult[] = [];
  const warmup = 20;
  const time = async (op: string, variant: string, fn: (i: number) => Promise<void>) => {
    const times: number[] = [];
    for (let i = 0; i < samples + warmup; i++) {
      const t0 = performance.now();
      await fn(i);
      if (i >= warmup) times.push(performance.now() - t0);
    }
    out.push({ op, variant, ...summarize(times) });
  };
  try {
    await hf.defineKind("plain");
    await hf.defineKind("capped", { maxRunning: 10_000 });
    await hf.defineKind("full", { maxRunning: 1 });
    const n = samples + warmup;
    for (const kind of ["plain", "capped", "full"]) {
      await c.query(
        `select holdfast.enqueue($1, $1 || ':' || i) from generate_series(1, $2::int) i`,
        [kind, kind === "full" ? 1_000 : n * 2],
      );
    }
    // "full" is at its cap: another session holds its one slot.
    await holder.query("select * from holdfast.claim(array['full'], 'holder')");
    await c.query("vacuum analyze holdfast.keys, holdfast.tasks");

    // Claim and complete timed apart: a capped kind's completion also frees a slot and
    // notifies the kind's workers.
    const claimAndTime = async (variant: string, kinds: string[]) => {
      const claims: number[] = [];
      const completes: number[] = [];
      for (let i = 0; i < samples + warmup; i++) {
        const t0 = performance.now();
        const { rows } = await c.query<{ id: string; fence: string }>(
          "select id, fence from holdfast.claim($1::text[], 'b', 1)",
          [kinds],
        );
        const t1 = performance.now();
        const done = rows[0];
        if (!done) throw new Error(`claim of ${kinds} returned nothing`);
        await c.query("select holdfast.complete($1, $2)", [done.id, done.fence]);
        if (i >= warmup) {
          claims.push(t1 - t0);
          completes.push(performance.now() - t1);
        }
      }
      out.push({ op: "claim", variant, ...summarize(claims) });
      out.push({ op: "complete", variant, ...summarize(completes) });
    };
    await claimAndTime("uncapped kind", ["plain"]);
    await claimAndTime("capped kind with room", ["capped"]);
    await claimAndTime("uncapped kind, a full capped kind asked too", ["plain", "full"]);

    await time("enqueue", "new task", async (i) => {
      await hf.enqueue("plain", { key: `e:${i}` });
    });
    await time("enqueue", "deduplicated", async () => {
      await hf.enqueue("plain", { key: "dd", dedupeKey: "dd" });
    });
    await time("enqueue", "deduplicated + debounce (start pushed)", async () => {
      await hf.enqueue("plain", {
        key: "db",
        dedupeKey: "db",
        debounce: "1 hour",
        maxWait: "1 day",
      });
    });
  } finally {
    await c.end();
    await holder.end();
    await hf.close();
    await dropDatabase(adminUrl, url);
  }
  return out;
}
