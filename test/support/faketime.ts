import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";

const candidates = [
  "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
  "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
  "/usr/lib/faketime/libfaketime.so.1",
];

function which(): string | undefined {
  return candidates.find((p) => existsSync(p));
}

let resolved: { lib?: string; reason?: string } | undefined;

/**
 * libfaketime (Debian package `faketime`), or why there is none. Missing and running as root
 * with apt-get available, it is installed, as CI does.
 */
export function faketimeLibrary(): { lib?: string; reason?: string } {
  if (resolved) return resolved;
  let lib = which();
  if (!lib && process.getuid?.() === 0 && existsSync("/usr/bin/apt-get")) {
    const apt = (args: string[]) =>
      execFileSync("apt-get", args, {
        stdio: "ignore",
        env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
        timeout: 300_000,
      });
    try {
      try {
        apt(["install", "-y", "--no-install-recommends", "faketime"]);
      } catch {
        apt(["update"]);
        apt(["install", "-y", "--no-install-recommends", "faketime"]);
      }
    } catch (err) {
      resolved = { reason: `apt-get install faketime failed: ${(err as Error).message}` };
      return resolved;
    }
    lib = which();
  }
  resolved = lib
    ? { lib }
    : { reason: "libfaketime is not installed (Debian: apt-get install faketime)" };
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
