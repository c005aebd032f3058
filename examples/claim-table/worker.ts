import type pg from "pg";
import type { Holdfast, Worker } from "../../src/index.js";
import { kind } from "./producer.js";

/**
 * The worker that replaces the claim loop: holdfast runs at most one task per work unit at a
 * time, for as long as it takes, and hands a crashed worker's unit to another within a second.
 * The handler's writes commit only while it still holds the unit (ctx.assertFence).
 */
export function messageWorker(hf: Holdfast, pool: pg.Pool): Worker {
  return hf.worker({
    concurrency: 3,
    handlers: {
      [kind]: async (task, ctx) => {
        const client = await pool.connect();
        try {
          await client.query("begin");
          const { rows } = await client.query<{ id: string; body: string }>(
            `select id, body from messages
             where work_unit = $1 and processed_at is null order by id`,
            [task.key],
          );
          for (const m of rows) {
            ctx.signal.throwIfAborted(); // lock lost, cancelled or shutting down
            await client.query("insert into derivations (message_id, summary) values ($1, $2)", [
              m.id,
              m.body.toUpperCase(),
            ]);
          }
          await client.query("update messages set processed_at = now() where id = any ($1)", [
            rows.map((m) => m.id),
          ]);
          await ctx.assertFence(client); // throws if another worker has claimed this unit since
          await client.query("commit");
        } catch (err) {
          await client.query("rollback");
          throw err;
        } finally {
          client.release();
        }
      },
    },
  });
}
