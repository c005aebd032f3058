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

/** One turn of a variant: its timings (claim and complete are timed apart). */
type Variant = (i: number) => Promise<number[]>;

/**
 * What a concurrency cap and a debounce cost on the claim and enqueue paths, each beside the
 * same call without the feature, on one session (round trip included). The variants of one
 * path take turns, call by call, so that a machine's changing load falls on all of them.
 * - claim, then complete, of an uncapped kind; of a capped kind with room (a slot taken, then
 *   freed with a NOTIFY); of an uncapped kind asked together with a full capped kind that has
 *   ready keys (left out of the scan);
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
  const warmup = 20;
  const timed = async (fn: () => Promise<unknown>): Promise<number> => {
    const t0 = performance.now();
    await fn();
    return performance.now() - t0;
  };
  /** Runs the variants in turns; each yields one or more timings per call. */
  const rounds = async (variants: Variant[], names: string[][]): Promise<FeatureCostResult[]> => {
    const times = names.flat().map(() => [] as number[]);
    let k = 0;
    const offsets = variants.map((_, i) => {
      const at = k;
      k += names[i]?.length ?? 0;
      return at;
    });
    for (let i = 0; i < samples + warmup; i++) {
      for (const [j, v] of variants.entries()) {
        const ts = await v(i);
        if (i >= warmup) for (const [n, t] of ts.entries()) times[(offsets[j] ?? 0) + n]?.push(t);
      }
    }
    return names.flat().map((label, i) => {
      const [op = "", variant = ""] = label.split("|");
      return { op, variant, ...summarize(times[i] ?? []) };
    });
  };
  try {
    await hf.defineKind("plain");
    await hf.defineKind("capped", { maxRunning: 10_000 });
    await hf.defineKind("full", { maxRunning: 1 });
    const n = samples + warmup;
    for (const kind of ["plain", "capped", "full"]) {
      await c.query(
        `select holdfast.enqueue($1, $1 || ':' || i) from generate_series(1, $2::int) i`,
        [kind, kind === "full" ? 1_000 : n * 3],
      );
    }
    // "full" is at its cap: another session holds its one slot.
    await holder.query("select * from holdfast.claim(array['full'], 'holder')");
    await c.query("vacuum analyze holdfast.keys, holdfast.tasks");

    const claimThenComplete =
      (kinds: string[]): Variant =>
      async () => {
        let row: { id: string; fence: string } | undefined;
        const claim = await timed(async () => {
          row = (
            await c.query<{ id: string; fence: string }>(
              "select id, fence from holdfast.claim($1::text[], 'b', 1)",
              [kinds],
            )
          ).rows[0];
        });
        if (!row) throw new Error(`claim of ${kinds} returned nothing`);
        const done = row;
        const complete = await timed(() =>
          c.query("select holdfast.complete($1, $2)", [done.id, done.fence]),
        );
        return [claim, complete];
      };
    const claims: Array<[string, string[]]> = [
      ["uncapped kind", ["plain"]],
      ["capped kind with room", ["capped"]],
      ["uncapped kind, a full capped kind asked too", ["plain", "full"]],
    ];
    const claimResults = await rounds(
      claims.map(([, kinds]) => claimThenComplete(kinds)),
      claims.map(([v]) => [`claim|${v}`, `complete|${v}`]),
    );

    const enqueues: Array<[string, (i: number) => Promise<unknown>]> = [
      ["new task", (i) => hf.enqueue("plain", { key: `e:${i}` })],
      ["deduplicated", () => hf.enqueue("plain", { key: "dd", dedupeKey: "dd" })],
      [
        "deduplicated + debounce (start pushed)",
        () =>
          hf.enqueue("plain", { key: "db", dedupeKey: "db", debounce: "1 hour", maxWait: "1 day" }),
      ],
    ];
    const enqueueResults = await rounds(
      enqueues.map(([, fn]) => async (i: number) => [await timed(() => fn(i))]),
      enqueues.map(([v]) => [`enqueue|${v}`]),
    );
    return [...claimResults, ...enqueueResults];
  } finally {
    await c.end();
    await holder.end();
    await hf.close();
    await dropDatabase(adminUrl, url);
  }
}
