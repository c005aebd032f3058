// npm run chaos -- [--minutes N] [--workers 4] [--faults kill,partition,restart[,pooler]]
// (pooler: w0 goes through a session PgBouncer that is SIGKILLed and restarted.)
// Exits non-zero if the checker finds any violation.
import { type Fault, soak } from "./soak.js";

const args = process.argv.slice(2);
const arg = (name: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const minutes = Number(arg("minutes") ?? 1);
const faults = (arg("faults") ?? "kill,partition,restart").split(",").filter(Boolean) as Fault[];

const report = await soak({
  durationMs: minutes * 60_000,
  workers: Number(arg("workers") ?? 4),
  concurrency: Number(arg("concurrency") ?? 3),
  faults,
  faultEveryMs: Number(arg("fault-every-ms") ?? 4_000),
  // Drains while keys progress; a key 60 s without progress is stuck.
  drainTimeoutMs: 900_000,
  stuckMs: 60_000,
  log: (l) => process.stderr.write(`${l}\n`),
});

const { violations, ...summary } = report;
process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
for (const v of violations.slice(0, 50)) process.stdout.write(`VIOLATION ${v.kind}: ${v.detail}\n`);
process.stdout.write(
  violations.length === 0
    ? "chaos: OK: no overlap, order per key kept, no kind over its cap, every task ended exactly once, nothing stuck, no extra session, every schedule tick enqueued once\n"
    : `chaos: ${violations.length} violation(s)\n`,
);
process.exit(violations.length === 0 ? 0 : 1);
