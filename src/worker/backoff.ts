/**
 * Calls `attempt` until it succeeds or `keepGoing()` turns false, waiting between failures a
 * delay that doubles from `initialMs` to `maxMs`, jittered (50–100 %) so that many workers
 * cut off together do not come back in step. Resolves the number of the attempt that
 * succeeded, or undefined once `keepGoing()` turned false.
 */
export async function retryWithBackoff(
  attempt: () => Promise<void>,
  opts: {
    initialMs: number;
    maxMs: number;
    keepGoing: () => boolean;
    onFailure: (err: unknown, attempt: number, retryInMs: number) => void;
  },
): Promise<number | undefined> {
  let delay = opts.initialMs;
  for (let n = 1; opts.keepGoing(); n++) {
    try {
      await attempt();
      return n;
    } catch (err) {
      const wait = Math.round(delay * (0.5 + Math.random() / 2));
      opts.onFailure(err, n, wait);
      // Not unref'd: a worker waiting for Postgres to come back keeps its process alive.
      await new Promise((r) => setTimeout(r, wait));
      delay = Math.min(delay * 2, opts.maxMs);
    }
  }
  return undefined;
}
