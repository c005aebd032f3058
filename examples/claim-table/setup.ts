import type { Holdfast } from "../../src/index.js";
import { kind } from "./producer.js";

/** Once per deploy, before producers run: the schema, and the kind with its settings. */
export async function setup(hf: Holdfast): Promise<void> {
  await hf.migrate();
  await hf.defineKind(kind, { maxAttempts: 5, retention: { succeeded: "1 day" } });
}
