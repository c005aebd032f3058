// One deriver worker process: `DATABASE_URL=postgres://… npx tsx examples/deriver/worker.ts`.
// Run several; kill one mid-dream and another continues the dream from its last checkpoint.
// SIGTERM stops it: a dream still running after DERIVER_SHUTDOWN_MS is aborted and, having
// checkpointed, handed over to another worker without counting an attempt.
// Env: HF_NAME, DERIVER_DREAM_MS (model time per batch), DERIVER_DREAM_BATCH.
import { pino } from "pino";
import { Holdfast } from "../../src/index.js";
import { deriverWorker } from "./deriver.js";

const name = process.env.HF_NAME ?? `deriver-${process.pid}`;
const hf = new Holdfast({
  connectionString: process.env.DATABASE_URL ?? "",
  logger: pino({ level: process.env.HF_LOG ?? "warn" }),
});
const worker = deriverWorker(hf, {
  name,
  dreamMs: Number(process.env.DERIVER_DREAM_MS ?? 50),
  dreamBatch: Number(process.env.DERIVER_DREAM_BATCH ?? 10),
  shutdownTimeoutMs: Number(process.env.DERIVER_SHUTDOWN_MS ?? 30_000),
});
const say = (event: string, data: Record<string, unknown> = {}) =>
  process.stdout.write(`${JSON.stringify({ event, worker: name, at: Date.now(), ...data })}\n`);
worker.on("task:start", (t) =>
  say("start", {
    id: t.id,
    kind: t.kind,
    key: t.key,
    attempt: t.attempt,
    checkpoint: t.checkpoint,
  }),
);
worker.on("task:end", (t, info) => say("end", { id: t.id, kind: t.kind, outcome: info.outcome }));
await worker.start();
say("ready");
process.once("SIGTERM", async () => {
  await worker.stop();
  await hf.close();
  say("stopped");
  process.exit(0);
});
