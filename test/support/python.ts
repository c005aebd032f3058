import { spawnSync } from "node:child_process";

/**
 * A Python 3 with psycopg 3 for the tests that run Python snippets: HOLDFAST_PYTHON if set, else
 * `python3` on the PATH, else the system's /usr/bin/python3 (where Debian's python3-psycopg,
 * which CI installs, is found when another python3 comes first on the PATH). `reason` says why
 * there is none.
 */
export function pythonWithPsycopg(): { bin?: string; reason?: string } {
  const candidates = process.env.HOLDFAST_PYTHON
    ? [process.env.HOLDFAST_PYTHON]
    : ["python3", "/usr/bin/python3"];
  for (const bin of candidates) {
    if (spawnSync(bin, ["-c", "import psycopg"], { stdio: "ignore" }).status === 0) return { bin };
  }
  return {
    reason: `no ${candidates.join(" or ")} with psycopg 3 (Debian: apt-get install python3-psycopg)`,
  };
}
