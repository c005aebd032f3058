import { debianFile } from "./debian.js";

let resolved: { lib?: string; reason?: string } | undefined;

/** libfaketime (Debian package `faketime`), or why there is none (see debianFile). */
export function faketimeLibrary(): { lib?: string; reason?: string } {
  if (resolved) return resolved;
  const { path, reason } = debianFile("faketime", [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
  ]);
  resolved = path ? { lib: path } : { reason };
  return resolved;
}

/** The environment that runs a process with its wall clock `skewS` seconds off (negative:
 *  behind) and its monotonic clock true, so its timers keep real time. */
export function skewedClock(lib: string, skewS: number): Record<string, string> {
  return {
    LD_PRELOAD: lib,
    FAKETIME: `${skewS >= 0 ? "+" : ""}${skewS}`,
    FAKETIME_DONT_FAKE_MONOTONIC: "1",
  };
}
