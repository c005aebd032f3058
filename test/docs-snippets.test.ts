// The docs' snippets are code: every ```ts block type-checks against src/ (as `import ... from
// "holdfast"`), every ```sql block runs against a real database (a page's blocks in order, on
// one session of a fresh database, as a reader pastes them into psql), and a block marked
// `<!-- snippet: run -->` (the quick starts) runs as a program and must get its work done.
// Markers, on the line before a fence (docs/contributing.md):
//   <!-- snippet: skip: why -->    not checked (a fragment, or output); keep these few
//   <!-- snippet: run -->          ts or python: also executed, with DATABASE_URL set
//   <!-- snippet: fails: HF004 --> sql: its last statement must fail with this SQLSTATE
// Imports of the package and its subpaths resolve to src/ through package.json `exports`.
// TypeScript snippets may use two names without declaring them: `hf` (a Holdfast) and `pool`
// (a pg.Pool), as built in docs/getting-started.md.
import { spawn } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import ts from "typescript";
import { afterAll, describe, expect, it } from "vitest";
import { freshDatabase, type TestDatabase } from "./support/db.js";
import { docFiles, root, type Snippet, snippets } from "./support/docs-markdown.js";
import { pythonWithPsycopg } from "./support/python.js";

const all = docFiles().flatMap(snippets);
const tsLangs = new Set(["ts", "typescript"]);
const markerOf = (s: Snippet) => s.marker ?? "";
const skipped = (s: Snippet) => markerOf(s).startsWith("skip:");
const where = (s: Snippet) => `${s.file}:${s.line}`;
const dir = join(root, ".tmp", "docs-snippets");
const slug = (s: Snippet) => `${s.file.replace(/[^A-Za-z0-9]+/g, "_")}_${s.line}`;

rmSync(dir, { recursive: true, force: true });
mkdirSync(dir, { recursive: true });

/** The package's entry points (package.json `exports`), each mapped to its source file. */
const entries: Record<string, string> = (() => {
  const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as {
    name: string;
    exports: Record<string, { types: string }>;
  };
  return Object.fromEntries(
    Object.entries(pkg.exports).map(([sub, e]) => [
      sub === "." ? pkg.name : `${pkg.name}/${sub.replace(/^\.\//, "")}`,
      e.types.replace(/^\.\/dist\//, "src/").replace(/\.d\.ts$/, ".ts"),
    ]),
  );
})();

const opened: TestDatabase[] = [];
afterAll(async () => {
  await Promise.all(opened.map((d) => d.drop()));
});
async function database(): Promise<TestDatabase> {
  const db = await freshDatabase();
  opened.push(db);
  return db;
}

describe("doc snippet markers", () => {
  it("name a known check, and a skip says why", () => {
    const bad = all
      .filter((s) => s.marker !== null)
      .filter((s) => !/^(skip: .{8,}|run|fails: [0-9A-Z]{5})$/.test(markerOf(s)))
      .map((s) => `${where(s)}: <!-- snippet: ${s.marker} -->`);
    expect(bad).toEqual([]);
  });
  it("a run marker is on a ts or python block, a fails marker on sql", () => {
    const bad = all.filter(
      (s) =>
        (markerOf(s) === "run" && !tsLangs.has(s.lang) && s.lang !== "python") ||
        (markerOf(s).startsWith("fails:") && s.lang !== "sql"),
    );
    expect(bad.map(where)).toEqual([]);
  });
});

describe("TypeScript snippets", () => {
  const tsSnippets = all.filter((s) => tsLangs.has(s.lang) && !skipped(s));
  it("type-check against the package's own types", () => {
    expect(tsSnippets.length).toBeGreaterThan(0);
    const files = tsSnippets.map((s) => {
      const path = join(dir, `${slug(s)}.ts`);
      writeFileSync(path, `${s.code}export {};\n`);
      return { path, s };
    });
    const globals = join(dir, "globals.d.ts");
    writeFileSync(
      globals,
      [
        'import type pg from "pg";',
        'import type { Holdfast } from "holdfast";',
        "declare global {",
        "  var hf: Holdfast;",
        "  var pool: pg.Pool;",
        "}",
        "export {};",
        "",
      ].join("\n"),
    );
    const config = ts.getParsedCommandLineOfConfigFile(
      join(root, "tsconfig.json"),
      {},
      {
        ...ts.sys,
        onUnRecoverableConfigFileDiagnostic: () => {},
      },
    );
    if (!config) throw new Error("cannot read tsconfig.json");
    const program = ts.createProgram([globals, ...files.map((f) => f.path)], {
      ...config.options,
      noEmit: true,
      declaration: false,
      sourceMap: false,
      baseUrl: root,
      paths: Object.fromEntries(Object.entries(entries).map(([name, src]) => [name, [src]])),
    });
    const problems: string[] = [];
    for (const { path, s } of files) {
      const sf = program.getSourceFile(path);
      if (!sf) throw new Error(`not compiled: ${path}`);
      const diags = [...program.getSyntacticDiagnostics(sf), ...program.getSemanticDiagnostics(sf)];
      for (const d of diags) {
        const line = d.start === undefined ? 0 : sf.getLineAndCharacterOfPosition(d.start).line;
        const text = ts.flattenDiagnosticMessageText(d.messageText, "\n");
        problems.push(`${s.file}:${s.line + 1 + line}: ${text}`);
      }
    }
    expect(problems).toEqual([]);
  }, 120_000);
});

/**
 * psql's `\gset` and `:name` / `:'name'` variables, so a page's SQL pastes into psql as is. A
 * statement whose line ends in a comment starting `-- true`, `-- false` or `-- 7` must return
 * that as its first column.
 */
function statements(code: string): Array<{ text: string; gset: boolean; result?: string }> {
  const out: Array<{ text: string; gset: boolean; result?: string }> = [];
  let buf: string[] = [];
  for (const line of code.split("\n")) {
    buf.push(line);
    const bare = line.replace(/--.*$/, "").trimEnd();
    const gset = bare.endsWith("\\gset");
    if (gset || bare.endsWith(";")) {
      const text = buf.join("\n").replace(/\\gset\s*(--.*)?$/, "");
      const result = /--\s*(true|false|-?\d+)(?=$|[\s:])/.exec(line)?.[1];
      buf = [];
      out.push(result === undefined ? { text, gset } : { text, gset, result });
    }
  }
  if (buf.join("").trim() !== "") out.push({ text: buf.join("\n"), gset: false });
  return out;
}

function substitute(text: string, vars: Map<string, string>): string {
  let out = "";
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i] as string;
    if (c === "'") quoted = !quoted;
    if (!quoted && c === ":" && text[i - 1] !== ":" && text[i + 1] !== ":") {
      const m = /^:(?:'([A-Za-z_]\w*)'|([A-Za-z_]\w*))/.exec(text.slice(i));
      const name = m?.[1] ?? m?.[2];
      if (m && name && vars.has(name)) {
        const v = vars.get(name) as string;
        out += m[1] ? `'${v.replaceAll("'", "''")}'` : v;
        i += m[0].length - 1;
        continue;
      }
    }
    out += c;
  }
  return out;
}

describe("SQL snippets", () => {
  const byFile = new Map<string, Snippet[]>();
  for (const s of all.filter((x) => x.lang === "sql" && !skipped(x))) {
    byFile.set(s.file, [...(byFile.get(s.file) ?? []), s]);
  }
  for (const [file, blocks] of byFile) {
    it(`of ${file} run in order on a fresh database`, async () => {
      const db = await database();
      const client = await db.session();
      const vars = new Map<string, string>();
      for (const s of blocks) {
        const expected = /^fails: (\w+)$/.exec(markerOf(s))?.[1];
        const list = statements(s.code);
        for (const [i, st] of list.entries()) {
          const last = i === list.length - 1;
          const text = substitute(st.text, vars);
          try {
            const res = await client.query(text);
            const rows = (Array.isArray(res) ? res.at(-1) : res)?.rows ?? [];
            if (st.gset) {
              if (rows.length !== 1) throw new Error(`\\gset needs one row, got ${rows.length}`);
              for (const [k, v] of Object.entries(rows[0] as object)) vars.set(k, String(v));
            }
            if (st.result !== undefined) {
              const got = rows[0] ? String(Object.values(rows[0] as object)[0]) : "no row";
              if (got !== st.result) throw new Error(`expected ${st.result}, got ${got}`);
            }
            if (expected && last) throw new Error(`expected SQLSTATE ${expected}, but it ran`);
          } catch (err) {
            const code = (err as { code?: string }).code;
            if (expected && last && code === expected) continue;
            throw new Error(`${where(s)}: ${(err as Error).message}\n${text}`, { cause: err });
          }
        }
      }
    });
  }
});

const found = pythonWithPsycopg();
const python = found.bin ?? "python3";
const hasPsycopg = found.bin !== undefined;

describe("quick starts", () => {
  const runs = all.filter((s) => markerOf(s) === "run");
  it("exist in the README, in TypeScript and in Python", () => {
    const readme = runs.filter((s) => s.file === "README.md").map((s) => s.lang);
    expect(readme).toContain("ts");
    expect(readme).toContain("python");
  });
  for (const s of runs) {
    const py = s.lang === "python";
    it.skipIf(py && !hasPsycopg)(
      `${where(s)} runs as written and its tasks succeed${py && !hasPsycopg ? ` (skipped: no psycopg for ${python})` : ""}`,
      async () => {
        const db = await database();
        const path = join(dir, `${slug(s)}.${py ? "py" : "ts"}`);
        // The package is this repository's source: the same code `npm install holdfast` ships.
        let code = s.code;
        if (!py) {
          for (const [name, src] of Object.entries(entries))
            code = code.replaceAll(`from "${name}"`, `from "${root}${src}"`);
        }
        writeFileSync(path, code);
        const child = spawn(
          py ? python : process.execPath,
          py ? [path] : ["--import", "tsx", path],
          {
            cwd: root,
            env: { ...process.env, DATABASE_URL: db.url, HOLDFAST_LOG_LEVEL: "warn" },
            stdio: ["ignore", "pipe", "pipe"],
          },
        );
        let output = "";
        child.stdout.on("data", (d) => {
          output += d;
        });
        child.stderr.on("data", (d) => {
          output += d;
        });
        const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
        // A worker runs until stopped: done once every task it was given has succeeded.
        const done = (async () => {
          for (;;) {
            const { rows } = await db.pool
              .query<{ n: string; ok: string }>(
                "select count(*) as n, count(*) filter (where state = 'succeeded') as ok from holdfast.tasks",
              )
              .catch(() => ({ rows: [{ n: "0", ok: "0" }] }));
            const r = rows[0];
            if (r && Number(r.n) > 0 && r.n === r.ok) return "succeeded" as const;
            await new Promise((resolve) => setTimeout(resolve, 100));
            if (child.exitCode !== null) return "exited" as const;
          }
        })();
        const timeout = new Promise<"timeout">((resolve) =>
          setTimeout(() => resolve("timeout"), 45_000).unref(),
        );
        const first = await Promise.race([done, exited.then(() => "exited" as const), timeout]);
        if (child.exitCode === null) child.kill("SIGTERM");
        const code_ = await exited;
        if (first === "exited" || first === "timeout") {
          expect({ first, code: code_, output }).toMatchObject({ first: "exited", code: 0 });
        }
        const { rows } = await db.pool.query<{ state: string; n: string }>(
          "select state, count(*) as n from holdfast.tasks group by state",
        );
        expect(rows.map((r) => r.state)).toEqual(["succeeded"]);
      },
      60_000,
    );
  }
});
