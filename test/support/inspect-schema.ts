import { readFileSync } from "node:fs";
import { Ajv } from "ajv";

const schema = JSON.parse(
  readFileSync(new URL("../../docs/inspect.schema.json", import.meta.url), "utf8"),
) as object;
// `format` is checked by hand below: ajv-formats is not worth a dependency for one field.
const validate = new Ajv({ allErrors: true, validateFormats: false }).compile(schema);

/** Throws with every violation when `doc` does not match docs/inspect.schema.json. */
export function assertInspectShape(doc: unknown): void {
  if (!validate(doc)) {
    throw new Error(`inspect --json does not match its schema: ${JSON.stringify(validate.errors)}`);
  }
  const at = (doc as { at: string }).at;
  if (Number.isNaN(Date.parse(at))) throw new Error(`inspect --json: at is not a date: ${at}`);
}
