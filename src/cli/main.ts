// Entry of the `holdfast` command (bin/holdfast.js loads this file or its compiled copy).
import { main } from "./program.js";

const code = await main(process.argv.slice(2));
// Exit explicitly: a handlers module may leave timers or sockets open after the worker stopped.
process.exit(code);
