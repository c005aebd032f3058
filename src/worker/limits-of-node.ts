// Two limits of the platform every component must respect the same way.

/** setTimeout cannot wait longer than 2^31 - 1 ms (~24.8 days): a longer delay fires at once.
 *  A longer wait arms this and, when it fires early, looks again. */
export const maxTimerMs = 2 ** 31 - 1;

/**
 * The application_name of one of a worker's sessions, `holdfast:<role>:<worker name>`, cut as
 * the server cuts it (to 63 bytes, NAMEDATALEN - 1), at a character boundary, so the name a
 * worker gives and the name pg_stat_activity shows are equal (inspect matches them).
 */
export function sessionName(role: "lock" | "listen", worker: string): string {
  let name = `holdfast:${role}:${worker}`;
  while (Buffer.byteLength(name, "utf8") > 63) name = name.slice(0, -1);
  return name;
}
