// Every relative link of the docs resolves: the file exists, and a #fragment names a heading of
// the page it points to. Links to the web are not fetched (CI has no business depending on them).
import { existsSync, statSync } from "node:fs";
import { dirname, join, normalize } from "node:path";
import { describe, expect, it } from "vitest";
import { anchors, docFiles, links, root } from "./support/docs-markdown.js";

/** Pages being written beside these docs: a link to one passes until it exists, then must resolve. */
const pending = new Set([
  "CHANGELOG.md",
  "docs/upgrading.md",
  "docs/failover.md",
  "docs/time.md",
  "docs/producers.md",
  "docs/replacing-a-claim-table.md",
  "docs/limits.md",
]);

describe("docs links", () => {
  for (const file of docFiles()) {
    it(`every relative link of ${file} resolves`, () => {
      const broken: string[] = [];
      for (const link of links(file)) {
        if (/^[a-z][a-z0-9+.-]*:/i.test(link.target)) continue; // https:, mailto:
        const [path = "", fragment] = link.target.split("#", 2);
        const target = path === "" ? file : normalize(join(dirname(file), decodeURI(path)));
        const where = `${file}:${link.line} → ${link.target}`;
        if (target.startsWith("..")) {
          broken.push(`${where}: outside the repository`);
          continue;
        }
        if (!existsSync(join(root, target))) {
          if (!pending.has(target)) broken.push(`${where}: no such file`);
          continue;
        }
        if (fragment && target.endsWith(".md") && statSync(join(root, target)).isFile()) {
          if (!anchors(target).has(fragment)) broken.push(`${where}: no heading #${fragment}`);
        }
      }
      expect(broken).toEqual([]);
    });
  }
});
