// The benchmark figures of the docs have one source, bench/results.json: the tables between
// `<!-- bench:NAME -->` markers are what scripts/bench-tables.ts renders from it, so a table
// copied by hand, or left behind by a new run, fails here.
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { blocks, markers, readResults, render, targets } from "../scripts/bench-tables.js";

describe("benchmark tables", () => {
  const results = readResults();
  for (const file of targets) {
    it(`${file.replace(/.*\/(?=docs\/|README)/, "")} matches bench/results.json (npx tsx scripts/bench-tables.ts)`, () => {
      const text = readFileSync(file, "utf8");
      expect(markers(text).length).toBeGreaterThan(0);
      expect(render(text, results)).toBe(text);
    });
  }
  it("every table the results allow is printed somewhere", () => {
    const used = new Set(targets.flatMap((f) => markers(readFileSync(f, "utf8"))));
    expect(Object.keys(blocks(results)).filter((name) => !used.has(name))).toEqual([]);
  });
});
