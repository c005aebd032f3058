import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { BulkEnqueuer } from "../bulk-enqueue.js";
import type { Peer } from "../schedule-systems.js";
import type { QueueSystem } from "./types.js";

/** The peer systems' constructors, as bench/peers/index.ts exports them. */
export interface Peers {
  GraphileSystem: new (tuned: boolean) => QueueSystem;
  PgBossSystem: new (tuned: boolean, queueOptions?: { expireInSeconds?: number }) => QueueSystem;
  /** Their parts of the schedules bench. */
  schedulePeers: Peer[];
  /** Their bulk paths (graphile-worker's addJobs, pg-boss's insert), new instances. */
  bulkEnqueuers: () => BulkEnqueuer[];
}

const dir = fileURLToPath(new URL("../peers/", import.meta.url));

/**
 * Installs bench/peers' packages when its node_modules is missing (`npm ci` from its own lock
 * file, exact versions) and loads the peer systems. The specifier is not a literal so that the
 * library's typecheck, which runs without those packages, does not follow it; bench/peers has
 * its own tsconfig (`npm run typecheck:bench`).
 */
export async function loadPeers(): Promise<Peers> {
  if (!existsSync(`${dir}node_modules/.package-lock.json`)) {
    process.stderr.write("installing the bench peers (npm ci --prefix bench/peers)…\n");
    const npm = process.platform === "win32" ? "npm.cmd" : "npm";
    const r = spawnSync(npm, ["ci", "--prefix", dir, "--no-audit", "--no-fund"], {
      stdio: ["ignore", "inherit", "inherit"],
      shell: process.platform === "win32",
    });
    if (r.status !== 0) throw new Error(`npm ci --prefix bench/peers failed (${r.status})`);
  }
  const spec = "../peers/index.js";
  return ((await import(spec)) as { peers: Peers }).peers;
}
