/** Where a command writes: the process's streams, or a buffer in tests. */
export interface Output {
  stdout: { write(chunk: string): unknown };
  stderr: { write(chunk: string): unknown };
  isTTY?: boolean | undefined;
  columns?: number | undefined;
}

export const processOutput: Output = {
  stdout: process.stdout,
  stderr: process.stderr,
  isTTY: process.stdout.isTTY,
  columns: process.stdout.columns,
};

/** host:port/database of a connection string, without the password, for error messages. */
export function describeTarget(url: string): string {
  try {
    const u = new URL(url);
    return `${u.hostname || "localhost"}:${u.port || "5432"}${u.pathname || "/"}`;
  } catch {
    return "(unparseable connection string)";
  }
}

/** The connection string from --database or DATABASE_URL; undefined when neither is set. */
export function databaseUrl(option: string | undefined): string | undefined {
  const url = option ?? process.env.DATABASE_URL;
  return url === undefined || url === "" ? undefined : url;
}
