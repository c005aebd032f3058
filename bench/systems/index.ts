import { DeriverSystem, deriverProduction } from "./deriver.js";
import { HoldfastSystem } from "./holdfast.js";
import { loadPeers, type Peers } from "./peers.js";
import type { QueueSystem } from "./types.js";

/**
 * The configurations the wake, throughput and idle sections compare, in report order. One list
 * for the bench process and its worker child processes (bench/tput-worker.ts), so a system
 * built in a child by its label is configured exactly as in the one-process runs.
 */
export function benchSystems(peers: Peers): Array<() => QueueSystem> {
  return [
    () => new HoldfastSystem(),
    () => new HoldfastSystem(true),
    () => new HoldfastSystem(true, false),
    () => new peers.GraphileSystem(false),
    () => new peers.GraphileSystem(true),
    () => new peers.PgBossSystem(false),
    () => new peers.PgBossSystem(true),
    () => new DeriverSystem(deriverProduction),
  ];
}

/** A new instance of the configuration labelled `label` in `benchSystems`. */
export async function makeSystem(label: string): Promise<QueueSystem> {
  for (const make of benchSystems(await loadPeers())) {
    const sys = make();
    if (sys.label === label) return sys;
  }
  throw new Error(`no bench system labelled ${JSON.stringify(label)}`);
}
