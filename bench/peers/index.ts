// The queues the benchmark compares holdfast with. Their packages live in bench/peers'
// own node_modules (installed on first use by bench/systems/peers.ts), so the library's
// install carries none of them; this module is loaded only after that install.
import type { Peers } from "../systems/peers.js";
import { GraphileBulk, PgBossBulk } from "./bulk.js";
import { GraphileSystem } from "./graphile.js";
import { PgBossSystem } from "./pgboss.js";
import { graphilePeer, pgbossPeer } from "./schedule.js";

export const peers: Peers = {
  GraphileSystem,
  PgBossSystem,
  schedulePeers: [graphilePeer, pgbossPeer],
  bulkEnqueuers: () => [new GraphileBulk(), new PgBossBulk()],
};
