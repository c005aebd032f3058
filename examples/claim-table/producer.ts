import type pg from "pg";
import type { Holdfast } from "../../src/index.js";

/** The kind that processes a work unit's new messages; its key is the work unit. */
export const kind = "process-messages";

/**
 * Stores a message and the task that processes it in one transaction: both commit, or
 * neither does. One pending task per work unit (dedupeKey): messages that arrive while it
 * waits fold into it, and the handler takes every unprocessed message of the unit.
 */
export async function saveMessage(
  pool: pg.Pool,
  hf: Holdfast,
  workUnit: string,
  body: string,
): Promise<number> {
  const client = await pool.connect();
  try {
    await client.query("begin");
    const { rows } = await client.query<{ id: string }>(
      "insert into messages (work_unit, body) values ($1, $2) returning id",
      [workUnit, body],
    );
    await hf.enqueue(kind, { key: workUnit, dedupeKey: `messages:${workUnit}` }, { client });
    await client.query("commit");
    return Number(rows[0]?.id);
  } catch (err) {
    await client.query("rollback");
    throw err;
  } finally {
    client.release();
  }
}

/** An import of many messages: their rows and their tasks in one transaction, two statements. */
export async function importMessages(
  pool: pg.Pool,
  hf: Holdfast,
  messages: Array<{ workUnit: string; body: string }>,
): Promise<void> {
  const client = await pool.connect();
  try {
    await client.query("begin");
    await client.query(
      "insert into messages (work_unit, body) select * from unnest($1::text[], $2::text[])",
      [messages.map((m) => m.workUnit), messages.map((m) => m.body)],
    );
    await hf.enqueueMany(
      kind,
      messages.map((m) => ({ key: m.workUnit, dedupeKey: `messages:${m.workUnit}` })),
      { client },
    );
    await client.query("commit");
  } catch (err) {
    await client.query("rollback");
    throw err;
  } finally {
    client.release();
  }
}
