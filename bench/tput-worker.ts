// One worker process of the 4-process throughput (bench/throughput4.ts), started with
// `node --import tsx` and driven over IPC. Per run it builds the named system from
// bench/systems (the same factories as the one-process runs), attaches it to the database the
// parent set up and filled, starts its worker (concurrency 10) when the parent says so, and
// runs the one-process run's no-op handler (await setImmediate). It reports its handled count
// every 10 ms while it changes and, after the worker stopped, every run's key, start and end.
// Starts and ends are process.hrtime (CLOCK_MONOTONIC, one clock for every process on the
// machine) minus a base the parent gives, so the parent can merge the runs of all processes
// and find two runs of one key at once, whichever processes ran them.
import { makeSystem } from "./systems/index.js";
import type { QueueSystem, RunningWorker } from "./systems/types.js";

export type ToWorker =
  | {
      type: "attach";
      label: string;
      url: string;
      keys: number;
      /** process.hrtime.bigint() of the parent, as a string: the zero of starts and ends. */
      base: string;
      /** 0: the measured no-op handler. > 0: hold each run this long (the overlap check). */
      holdMs: number;
    }
  | { type: "start" }
  | { type: "stop" };

export interface Runs {
  keys: string[];
  /** ns since the parent's base; an end is null for a run that never returned. */
  starts: number[];
  ends: Array<number | null>;
}

export type FromWorker =
  | { type: "ready" }
  | { type: "attached" }
  | { type: "started" }
  | { type: "handled"; n: number }
  | ({ type: "stopped"; handled: number } & Runs)
  | { type: "error"; message: string };

const send = (m: FromWorker) => process.send?.(m);

let system: QueueSystem | undefined;
let worker: RunningWorker | undefined;
let ticker: NodeJS.Timeout | undefined;
let base = 0n;
let holdMs = 0;
let handled = 0;
let runs: Runs = { keys: [], starts: [], ends: [] };

const now = () => Number(process.hrtime.bigint() - base);

const handler = async (key: string): Promise<void> => {
  const i = runs.keys.push(key) - 1;
  runs.starts.push(now());
  runs.ends.push(null);
  if (holdMs > 0) await new Promise<void>((r) => setTimeout(r, holdMs));
  else await new Promise<void>((r) => setImmediate(r));
  runs.ends[i] = now();
  handled++;
};

async function handle(m: ToWorker): Promise<void> {
  switch (m.type) {
    case "attach":
      system = await makeSystem(m.label);
      system.attach(m.url, m.keys);
      base = BigInt(m.base);
      holdMs = m.holdMs;
      handled = 0;
      runs = { keys: [], starts: [], ends: [] };
      send({ type: "attached" });
      return;
    case "start": {
      let sent = 0;
      ticker = setInterval(() => {
        if (handled === sent) return;
        sent = handled;
        send({ type: "handled", n: sent });
      }, 10);
      worker = await (system as QueueSystem).startWorker(10, handler);
      send({ type: "started" });
      return;
    }
    case "stop":
      clearInterval(ticker);
      await worker?.stop();
      await system?.close();
      worker = undefined;
      system = undefined;
      send({ type: "stopped", handled, ...runs });
      return;
  }
}

process.on("message", (m: ToWorker) => {
  handle(m).catch((err: unknown) =>
    send({
      type: "error",
      message: err instanceof Error ? (err.stack ?? err.message) : String(err),
    }),
  );
});
// The parent ended (or died): nothing left to report to.
process.on("disconnect", () => process.exit(0));
send({ type: "ready" });
