import { randomBytes } from "node:crypto";
import pg from "pg";
import { pino } from "pino";
import { afterAll, beforeAll, inject } from "vitest";
import { Holdfast } from "../../src/index.js";
import type { DefineKindOptions } from "../../src/types.js";

export const silent = pino({ level: "silent" });

export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

export interface TestDatabase {
  url: string;
  /** A pool on the test database for assertions. */
  pool: pg.Pool;
  /** A dedicated session of its own (a lock holder, a producer), ended by drop(). */
  session(): Promise<pg.Client>;
  drop(): Promise<void>;
}

/**
 * A fresh database for one test file (advisory locks are per database, so files running in
 * parallel never see each other's locks). Migrated unless `migrate: false`.
 */
export async function freshDatabase(
  opts: { migrate?: boolean; adminUrl?: string } = {},
): Promise<TestDatabase> {
  const adminUrl = opts.adminUrl ?? inject("adminUrl");
  const name = `hf_${randomBytes(6).toString("hex")}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`create database ${name}`);
  await admin.end();
  const url = withDatabase(adminUrl, name);
  if (opts.migrate !== false) {
    const hf = new Holdfast({ connectionString: url, logger: silent });
    await hf.migrate();
    await hf.close();
  }
  const pool = new pg.Pool({ connectionString: url, max: 5 });
  pool.on("error", () => {});
  const sessions: pg.Client[] = [];
  return {
    url,
    pool,
    session: async () => {
      const c = new pg.Client({ connectionString: url });
      c.on("error", () => {}); // a test may terminate it
      await c.connect();
      sessions.push(c);
      return c;
    },
    drop: async () => {
      await Promise.all(sessions.map((c) => c.end().catch(() => {})));
      await pool.end();
      const a = new pg.Client({ connectionString: adminUrl });
      await a.connect();
      await a.query(`drop database if exists ${name} with (force)`);
      await a.end();
    },
  };
}

/**
 * Registers beforeAll/afterAll hooks for a fresh database and a Holdfast on it with `kinds`
 * defined; read `.db` and `.hf` inside the tests.
 */
export function useHoldfast(kinds: Record<string, DefineKindOptions> = {}): {
  readonly db: TestDatabase;
  readonly hf: Holdfast;
} {
  let db: TestDatabase | undefined;
  let hf: Holdfast | undefined;
  beforeAll(async () => {
    db = await freshDatabase();
    hf = new Holdfast({ connectionString: db.url, logger: silent });
    for (const [kind, options] of Object.entries(kinds)) await hf.defineKind(kind, options);
  });
  afterAll(async () => {
    await hf?.close();
    await db?.drop();
  });
  const ready = <T>(v: T | undefined): T => {
    if (v === undefined) throw new Error("useHoldfast: read .db/.hf inside a test or hook");
    return v;
  };
  return {
    get db() {
      return ready(db);
    },
    get hf() {
      return ready(hf);
    },
  };
}
