import { performance } from "node:perf_hooks";
import pg from "pg";
import { pino } from "pino";
import { Holdfast } from "../src/index.js";
import { createDatabase, dropDatabase } from "./db.js";
import { type Summary, summarize } from "./stats.js";

export interface ClaimScaleResult extends Summary {
  pending: number;
}

/**
 * holdfast.claim() latency (one task, on one session, then complete) as the number of pending
 * tasks grows. The backlog is written in bulk with the same rows enqueue() would produce.
 */
export async function claimScale(
  adminUrl: string,
  levels: number[],
  samples: number,
): Promise<ClaimScaleResult[]> {
  const url = await createDatabase(adminUrl, "claimscale");
  const hf = new Holdfast({ connectionString: url, logger: pino({ level: "silent" }) });
  await hf.migrate();
  await hf.close();
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  const out: ClaimScaleResult[] = [];
  const warmup = 20; // plan caches and buffers warm before timing
  try {
    await c.query("select holdfast.define_kind('noop')");
    let pending = 0;
    let next = 1;
    for (const level of levels) {
      // Grow the backlog to level + samples (+ warm-up), in the shape enqueue() leaves it.
      const add = level + samples + warmup - pending;
      await c.query(
        `insert into holdfast.keys (key, lock_id)
         select 'c' || i, holdfast.lock_id('c' || i) from generate_series($1::int, $2::int) i`,
        [next, next + add - 1],
      );
      await c.query(
        `insert into holdfast.tasks (kind, key, max_attempts)
         select 'noop', 'c' || i, 5 from generate_series($1::int, $2::int) i`,
        [next, next + add - 1],
      );
      await c.query(
        `update holdfast.keys k set head_id = t.id, head_kind = t.kind,
           head_priority = t.priority, head_run_at = t.run_at
         from holdfast.tasks t where t.key = k.key and k.head_id is null and t.state = 'pending'`,
      );
      next += add;
      pending += add;
      await c.query("vacuum analyze holdfast.keys");
      await c.query("vacuum analyze holdfast.tasks");
      const times: number[] = [];
      for (let i = 0; i < samples + warmup; i++) {
        const t0 = performance.now();
        const { rows } = await c.query<{ id: string; fence: string }>(
          "select id, fence from holdfast.claim(array['noop'], 'bench', 1)",
        );
        const dt = performance.now() - t0;
        const row = rows[0];
        if (!row) throw new Error("claim returned nothing");
        await c.query("select holdfast.complete($1, $2)", [row.id, row.fence]);
        if (i >= warmup) times.push(dt);
      }
      pending -= samples + warmup;
      out.push({ pending: level, ...summarize(times) });
    }
  } finally {
    await c.end();
    await dropDatabase(adminUrl, url);
  }
  return out;
}
