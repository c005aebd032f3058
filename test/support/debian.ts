import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";

/**
 * The first of `paths` that exists, from Debian package `pkg`, or why there is none. Missing
 * and running as root with apt-get available, the package is installed first, as CI does;
 * `installed` runs after an install (a package that starts a service the tests do not want).
 */
export function debianFile(
  pkg: string,
  paths: string[],
  installed: () => void = () => {},
): { path?: string; reason?: string } {
  const which = () => paths.find((p) => existsSync(p));
  let path = which();
  if (!path && process.getuid?.() === 0 && existsSync("/usr/bin/apt-get")) {
    const apt = (args: string[]) =>
      execFileSync("apt-get", args, {
        stdio: "ignore",
        env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
        timeout: 300_000,
      });
    try {
      try {
        apt(["install", "-y", "--no-install-recommends", pkg]);
      } catch {
        apt(["update"]);
        apt(["install", "-y", "--no-install-recommends", pkg]);
      }
    } catch (err) {
      return { reason: `apt-get install ${pkg} failed: ${(err as Error).message}` };
    }
    installed();
    path = which();
  }
  return path ? { path } : { reason: `${pkg} is not installed (Debian: apt-get install ${pkg})` };
}
