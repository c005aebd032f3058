// The client must give a lock session up well before the server may free its locks: options
// that break that order are refused when the worker is configured.
import { expect, it } from "vitest";
import { ConfigError, lockSessionDefaults } from "../../src/index.js";
import { resolveWorkerOptions } from "../../src/options.js";
import { clientDetectionMs, serverReleaseMs } from "../../src/worker/lock-session.js";

const handlers = { job: async () => {} };

it("by default the client gives up after 4 s of silence and the server frees locks no sooner than 20 s", () => {
  const s = resolveWorkerOptions({ handlers }).lockSession;
  expect(s).toEqual(lockSessionDefaults);
  expect(clientDetectionMs(s)).toBe(4_000);
  expect(serverReleaseMs(s)).toBe(20_000);
});

it("the server release bound is the smallest of tcp_user_timeout, keepalives and idle_session_timeout", () => {
  const base = { ...lockSessionDefaults };
  expect(serverReleaseMs({ ...base, tcpUserTimeoutMs: 0 })).toBe(25_000); // 10 + 5 x 3 s
  expect(serverReleaseMs({ ...base, tcpUserTimeoutMs: 60_000 })).toBe(25_000);
  expect(serverReleaseMs({ ...base, idleSessionTimeoutMs: 12_000 })).toBe(12_000);
});

it.each([
  ["a health check slower than half the release bound", { healthCheckTimeoutMs: 9_500 }],
  ["a short tcp_user_timeout", { tcpUserTimeoutMs: 5_000 }],
  [
    "short keepalives without tcp_user_timeout",
    {
      tcpUserTimeoutMs: 0,
      tcpKeepalivesIdleSec: 2,
      tcpKeepalivesIntervalSec: 1,
      tcpKeepalivesCount: 1,
    },
  ],
  ["an idle_session_timeout close to the detection time", { idleSessionTimeoutMs: 6_000 }],
  [
    "a margin under one second",
    {
      healthCheckIntervalMs: 100,
      healthCheckTimeoutMs: 200,
      tcpUserTimeoutMs: 1_000,
      idleSessionTimeoutMs: 0,
    },
  ],
  ["a zero health-check interval", { healthCheckIntervalMs: 0 }],
  ["a fractional timeout", { healthCheckTimeoutMs: 1.5 }],
])("refuses %s with a ConfigError", (_what, lockSession) => {
  expect(() => resolveWorkerOptions({ handlers, lockSession })).toThrow(ConfigError);
});

it("accepts short settings that keep the order, as the partition test uses", () => {
  const s = resolveWorkerOptions({
    handlers,
    lockSession: {
      healthCheckIntervalMs: 200,
      healthCheckTimeoutMs: 800,
      tcpUserTimeoutMs: 3_000,
      idleSessionTimeoutMs: 3_000,
    },
  }).lockSession;
  expect(clientDetectionMs(s) * 2).toBeLessThanOrEqual(serverReleaseMs(s));
});
