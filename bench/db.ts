import { randomBytes } from "node:crypto";
import pg from "pg";
import { withDatabase } from "../test/support/db.js";
import { type EmbeddedServer, startEmbedded } from "../test/support/postgres.js";

export { withDatabase };

/** The benchmark's one server: embedded Postgres with fsync ON (commits cost a real flush). */
export async function startBenchServer(flags: string[] = []): Promise<EmbeddedServer> {
  return await startEmbedded(["-c", "fsync=on", "-c", "synchronous_commit=on", ...flags]);
}

/** Creates an empty database and returns its URL; each scenario and system gets its own. */
export async function createDatabase(adminUrl: string, prefix = "bench"): Promise<string> {
  const name = `${prefix}_${randomBytes(5).toString("hex")}`;
  const c = new pg.Client({ connectionString: adminUrl });
  await c.connect();
  try {
    await c.query(`create database ${name}`);
  } finally {
    await c.end();
  }
  return withDatabase(adminUrl, name);
}

export async function dropDatabase(adminUrl: string, url: string): Promise<void> {
  const name = new URL(url).pathname.slice(1);
  const c = new pg.Client({ connectionString: adminUrl });
  await c.connect();
  try {
    await c.query(`drop database if exists ${name} with (force)`);
  } finally {
    await c.end();
  }
}

/**
 * A benchmark drops each database with its connections when a run ends (also after a timeout,
 * with queries in flight): a terminated client, idle or being ended, must not crash the run.
 */
export function quietPool(pool: pg.Pool): pg.Pool {
  pool.on("error", () => {});
  pool.on("connect", (client) => client.on("error", () => {}));
  return pool;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `check` every `everyMs` until it returns true or `timeoutMs` passes. */
export async function until(
  check: () => Promise<boolean> | boolean,
  timeoutMs: number,
  everyMs = 20,
): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await check()) return true;
    await sleep(everyMs);
  }
  return false;
}
