// `npm run inspect -- [--json] [--watch [s]] [--key k] [--kind k] [--database url]`:
// the same as `holdfast inspect` (docs/observability.md).
import { main } from "../src/cli/program.js";

process.exit(await main(["inspect", ...process.argv.slice(2)]));
