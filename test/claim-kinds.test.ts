import pg from "pg";
import { expect, it } from "vitest";
import { useHoldfast } from "./support/db.js";

const t = useHoldfast({ mine: {}, other: {} });

/**
 * Index entries of holdfast.keys this session has read and not yet reported to the statistics
 * system. Inside one transaction nothing is reported, so the difference of two readings is what
 * the statements between them read (PostgreSQL 13 and 14 cannot flush statistics on demand).
 */
async function keyIndexReads(c: pg.Client): Promise<number> {
  const { rows } = await c.query<{ n: string }>(
    `select coalesce(sum(pg_stat_get_xact_tuples_returned(indexrelid)), 0) as n
     from pg_index where indrelid = 'holdfast.keys'::regclass`,
  );
  return Number(rows[0]?.n);
}

it("a claim reads only its own kinds' ready keys: 5,000 ready keys of another kind are not scanned", async () => {
  const { db } = t;
  await db.pool.query(
    "select holdfast.enqueue('other', 'other:' || g) from generate_series(1, 5000) g",
  );
  await db.pool.query("select holdfast.enqueue('mine', 'mine:1')");
  await db.pool.query("analyze holdfast.keys");
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  try {
    await c.query("begin");
    const before = await keyIndexReads(c);
    const { rows: none } = await c.query(
      "select * from holdfast.claim(array['mine', 'mine'], 'w', 10, 10)",
    );
    const { rows: idle } = await c.query("select holdfast.next_run_at(array['mine']) as at");
    const reads = (await keyIndexReads(c)) - before;
    await c.query("commit");
    // The one ready key of 'mine' is claimed once (duplicate kinds are one kind); the next
    // run time probe finds nothing; neither walks the 5,000 'other' keys.
    expect(none.map((r) => r.key)).toEqual(["mine:1"]);
    expect(idle[0].at).toBeNull();
    expect(reads).toBeLessThan(100);
    const { rows: held } = await c.query(
      "select count(*)::int as n from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()",
    );
    expect(held[0].n).toBe(1);
  } finally {
    await c.end();
  }
});
