#!/usr/bin/env node
// The `holdfast` command. In a clone (src/ present) it runs the TypeScript sources through tsx,
// so no build step is needed and handler modules may be TypeScript; an installed package has
// only dist/ and runs the compiled CLI.
import { existsSync } from "node:fs";

const src = new URL("../src/cli/main.ts", import.meta.url);
if (existsSync(src)) {
  const { register } = await import("tsx/esm/api");
  register();
  await import(src.href);
} else {
  await import(new URL("../dist/cli/main.js", import.meta.url).href);
}
