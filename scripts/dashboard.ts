// `npm run dashboard -- [--port 8080] [--host 127.0.0.1] [--allow-actions] [--database url]`:
// the same as `holdfast dashboard` (docs/observability.md).
import { main } from "../src/cli/program.js";

process.exit(await main(["dashboard", ...process.argv.slice(2)]));
