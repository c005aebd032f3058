import pg from "pg";
import type { TestProject } from "vitest/node";
import { startServer } from "./support/postgres.js";

declare module "vitest" {
  export interface ProvidedContext {
    adminUrl: string;
    /** The test server's major version, for tests of features newer than PostgreSQL 13. */
    serverMajor: number;
  }
}

/** The server's major version, e.g. 13 (server_version_num 130023). */
async function serverMajor(url: string): Promise<number> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows } = await client.query<{ v: string }>(
      "select current_setting('server_version_num') as v",
    );
    return Math.floor(Number(rows[0]?.v) / 10_000);
  } finally {
    await client.end();
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const server = await startServer();
  const major = await serverMajor(server.url);
  const wanted = process.env.HOLDFAST_PG_MAJOR;
  // The version matrix must test the major it names, not whatever DATABASE_URL points at.
  if (wanted && String(major) !== wanted.trim()) {
    await server.stop();
    throw new Error(`HOLDFAST_PG_MAJOR=${wanted} but the test server is PostgreSQL ${major}`);
  }
  project.provide("adminUrl", server.url);
  project.provide("serverMajor", major);
  return async () => {
    await server.stop();
  };
}
