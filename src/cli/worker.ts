import http from "node:http";
import path from "node:path";
import { pathToFileURL } from "node:url";
import type { Logger } from "pino";
import { ConfigError, ShutdownError } from "../errors.js";
import type { Holdfast } from "../holdfast.js";
import type { WorkerOptions } from "../types.js";

export interface WorkerCommandOptions {
  handlers: string;
  concurrency: number;
  name?: string | undefined;
  shutdownTimeoutMs?: number | undefined;
  metricsPort?: number | undefined;
}

type Handlers = WorkerOptions["handlers"];

/** Loads `{ kind: handler | { handler, maxAttempts } }` from a module's `handlers` or default export. */
export async function loadHandlers(modulePath: string): Promise<Handlers> {
  const url = pathToFileURL(path.resolve(modulePath)).href;
  let mod: Record<string, unknown>;
  try {
    mod = await import(url);
  } catch (err) {
    throw new ConfigError(`holdfast: cannot load handlers module ${modulePath}: ${String(err)}`, {
      cause: err,
    });
  }
  const handlers = mod.handlers ?? mod.default;
  if (typeof handlers !== "object" || handlers === null || Object.keys(handlers).length === 0) {
    throw new ConfigError(
      `holdfast: ${modulePath} must export \`handlers\` (or a default export): an object mapping each kind to a handler`,
    );
  }
  return handlers as Handlers;
}

/**
 * Runs a worker until SIGTERM/SIGINT. First signal: stop claiming and wait for running handlers
 * (up to the shutdown timeout); second: abort the handlers' signals now; third: exit at once.
 */
export async function runWorker(
  hf: Holdfast,
  opts: WorkerCommandOptions,
  logger: Logger,
): Promise<number> {
  const handlers = await loadHandlers(opts.handlers);
  const worker = hf.worker({
    handlers,
    concurrency: opts.concurrency,
    ...(opts.name === undefined ? {} : { name: opts.name }),
    ...(opts.shutdownTimeoutMs === undefined ? {} : { shutdownTimeoutMs: opts.shutdownTimeoutMs }),
  });
  let server: http.Server | undefined;
  if (opts.metricsPort !== undefined) {
    const metrics = hf.metrics();
    server = http.createServer((req, res) => {
      if (req.url !== "/metrics") {
        res.writeHead(404).end();
        return;
      }
      metrics.text().then(
        (body) => res.writeHead(200, { "content-type": metrics.contentType }).end(body),
        (err: unknown) => res.writeHead(500).end(String(err)),
      );
    });
    const srv = server;
    await new Promise<void>((resolve, reject) => {
      srv.once("error", reject);
      srv.listen(opts.metricsPort, () => resolve());
    });
    const addr = srv.address();
    logger.info(
      { event: "metrics_listening", port: typeof addr === "object" ? addr?.port : addr },
      "holdfast: serving /metrics",
    );
  }

  let signals = 0;
  let stopping: Promise<void> | undefined;
  const done = new Promise<number>((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      signals += 1;
      if (signals === 1) {
        logger.info(
          { event: "shutdown_requested", signal },
          "holdfast: stopping; waiting for running tasks (send again to abort them)",
        );
        stopping = worker.stop().then(async () => {
          server?.close();
          await hf.close();
        });
        stopping.then(
          () => resolve(0),
          (err: unknown) => {
            logger.error({ event: "shutdown_failed", err }, "holdfast: shutdown failed");
            resolve(1);
          },
        );
      } else if (signals === 2) {
        logger.warn(
          { event: "shutdown_abort", signal, running: worker.activeCount },
          "holdfast: aborting running tasks (send again to exit at once)",
        );
        // A run that checkpointed is handed over to another worker, its attempt not counted.
        worker.shutdownNow(new ShutdownError(`holdfast: shutdown: aborted by a second ${signal}`));
      } else {
        resolve(130);
      }
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
  });
  await worker.start();
  return await done;
}
