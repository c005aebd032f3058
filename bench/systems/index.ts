import { DeriverSystem, deriverProduction } from "./deriver.js";
import { GraphileSystem } from "./graphile.js";
import { HoldfastSystem } from "./holdfast.js";
import { PgBossSystem } from "./pgboss.js";
import type { QueueSystem } from "./types.js";

/**
 * The configurations the wake, throughput and idle sections compare, in report order. One list
 * for the bench process and its worker child processes (bench/tput-worker.ts), so a system
 * built in a child by its label is configured exactly as in the one-process runs.
 */
export const benchSystems: Array<() => QueueSystem> = [
  () => new HoldfastSystem(),
  () => new HoldfastSystem(true),
  () => new GraphileSystem(false),
  () => new GraphileSystem(true),
  () => new PgBossSystem(false),
  () => new PgBossSystem(true),
  () => new DeriverSystem(deriverProduction),
];

/** A new instance of the configuration labelled `label` in `benchSystems`. */
export function makeSystem(label: string): QueueSystem {
  for (const make of benchSystems) {
    const sys = make();
    if (sys.label === label) return sys;
  }
  throw new Error(`no bench system labelled ${JSON.stringify(label)}`);
}
