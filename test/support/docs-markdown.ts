// Reads the project's Markdown: which files are docs, their fenced snippets with the marker
// comment before each, their links and their headings' anchors (GitHub's rules).
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";

export const root = fileURLToPath(new URL("../../", import.meta.url));

/** README, CHANGELOG, every page under docs/ and the SQL notes: what users read. */
export function docFiles(): string[] {
  const files = ["README.md", "CHANGELOG.md", "sql/README.md"].filter((f) =>
    existsSync(join(root, f)),
  );
  const walk = (dir: string): string[] =>
    readdirSync(join(root, dir), { withFileTypes: true }).flatMap((e) =>
      e.isDirectory()
        ? walk(`${dir}/${e.name}`)
        : e.name.endsWith(".md")
          ? [`${dir}/${e.name}`]
          : [],
    );
  return [...files, ...walk("docs")];
}

export function read(file: string): string {
  return readFileSync(join(root, file), "utf8");
}

export interface Snippet {
  file: string;
  /** 1-based line of the opening fence. */
  line: number;
  lang: string;
  code: string;
  /** `<!-- snippet: WHAT -->` on the line before the fence (blank lines allowed between). */
  marker: string | null;
}

export function snippets(file: string): Snippet[] {
  const lines = read(file).split("\n");
  const out: Snippet[] = [];
  let marker: string | null = null;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] as string;
    const m = /^<!-- snippet: (.+?) -->$/.exec(line.trim());
    if (m) {
      marker = m[1] as string;
      continue;
    }
    // A block that shows a file of the repository verbatim is checked where the file lives
    // (tsc compiles examples/, and a test runs them and holds the block equal to the file).
    const included = /^<!-- include: (\S+) -->$/.exec(line.trim());
    if (included) {
      marker = `skip: included from ${included[1]}, checked there`;
      continue;
    }
    const open = /^(\s*)(```+)(\S*)/.exec(line);
    if (!open) {
      if (line.trim() !== "") marker = null;
      continue;
    }
    const [, indent = "", fence = "```", lang = ""] = open;
    const body: string[] = [];
    let j = i + 1;
    for (; j < lines.length; j++) {
      const l = lines[j] as string;
      if (l.trim() === fence) break;
      body.push(l.startsWith(indent) ? l.slice(indent.length) : l);
    }
    out.push({ file, line: i + 1, lang, code: `${body.join("\n")}\n`, marker });
    marker = null;
    i = j;
  }
  return out;
}

/** Text outside fenced blocks and inline code, where links and headings live. */
function prose(text: string, keepInline = false): string[] {
  const out: string[] = [];
  let fence: string | null = null;
  for (const line of text.split("\n")) {
    const f = /^\s*(```+)/.exec(line);
    if (f) {
      if (fence === null) fence = f[1] as string;
      else if (line.trim() === fence) fence = null;
      out.push("");
      continue;
    }
    out.push(fence !== null ? "" : keepInline ? line : line.replace(/`[^`]*`/g, "``"));
  }
  return out;
}

export interface Link {
  file: string;
  line: number;
  target: string;
}

export function links(file: string): Link[] {
  const out: Link[] = [];
  for (const [i, line] of prose(read(file)).entries()) {
    for (const m of line.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
      out.push({ file, line: i + 1, target: m[1] as string });
    }
    for (const m of line.matchAll(/<img [^>]*src="([^"]+)"/g)) {
      out.push({ file, line: i + 1, target: m[1] as string });
    }
  }
  return out;
}

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes, -1, -2 on repeats. */
export function anchors(file: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const line of prose(read(file), true)) {
    const h = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!h) continue;
    const text = (h[1] as string).replace(/\[([^\]]*)\]\([^)]*\)/g, "$1").replace(/<[^>]+>/g, "");
    const base = text
      .toLowerCase()
      .replace(/[^\p{L}\p{N}\s_-]/gu, "")
      .replace(/\s/g, "-");
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  for (const m of read(file).matchAll(/<a (?:name|id)="([^"]+)"/g)) out.add(m[1] as string);
  return out;
}

export function rel(file: string): string {
  return relative(root, join(root, file));
}
