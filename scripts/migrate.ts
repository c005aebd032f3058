// `npm run migrate [-- --database url]`: applies pending schema migrations (DATABASE_URL).
import { main } from "../src/cli/program.js";

process.exit(await main(["migrate", ...process.argv.slice(2)]));
