import { sessionName } from "../worker/limits-of-node.js";
import type { Snapshot } from "./snapshot.js";

/** "850ms", "12.3s", "4m05s", "2h13m", "3d04h"; "-" for unknown. */
export function formatDuration(ms: number | null): string {
  if (ms === null) return "-";
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)}s`;
  const pad = (n: number) => String(n).padStart(2, "0");
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${pad(Math.floor(s % 60))}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h${pad(m % 60)}m`;
  return `${Math.floor(h / 24)}d${pad(h % 24)}h`;
}

interface Column {
  title: string;
  align?: "left" | "right";
  /** The one column that shrinks (with an ellipsis) to fit the width. */
  flex?: boolean;
}

/** Fits a cell in `width` characters, keeping both ends of a long key (the middle is elided). */
function clip(text: string, width: number): string {
  if (text.length <= width) return text;
  if (width <= 1) return text.slice(0, width);
  const head = Math.ceil((width - 1) / 2);
  return `${text.slice(0, head)}…${text.slice(text.length - (width - 1 - head))}`;
}

/** An aligned table no wider than `width`; `details[i]` is an indented line under row i. */
function table(
  columns: Column[],
  rows: string[][],
  width: number,
  details: (string | undefined)[] = [],
): string[] {
  const widths = columns.map((c, i) =>
    Math.max(c.title.length, ...rows.map((r) => (r[i] ?? "").length)),
  );
  const gap = 2;
  const total = () => widths.reduce((a, b) => a + b, 0) + gap * (columns.length - 1) + 2;
  const flex = columns.findIndex((c) => c.flex);
  if (flex >= 0 && total() > width) {
    const cur = widths[flex] ?? 0;
    widths[flex] = Math.max(columns[flex]?.title.length ?? 0, 8, cur - (total() - width));
  }
  const line = (cells: string[]) =>
    `  ${cells
      .map((cell, i) => {
        const w = widths[i] ?? 0;
        const text = clip(cell, w);
        return columns[i]?.align === "right" ? text.padStart(w) : text.padEnd(w);
      })
      .join(" ".repeat(gap))
      .trimEnd()}`;
  const out = [line(columns.map((c) => c.title))];
  rows.forEach((r, i) => {
    out.push(line(r));
    const d = details[i];
    if (d) out.push(`      ${d}`.slice(0, width));
  });
  return out;
}

const int = (n: number | null) => (n === null ? "-" : n.toLocaleString("en-US"));
const text = (s: string | null | undefined) => (s === null || s === undefined ? "-" : s);

/** A section titled with its row count: "  none" when empty, else what `render` makes. */
function counted(title: string, rows: unknown[], render: () => string[]): string[] {
  return [`${title} (${rows.length})`, ...(rows.length === 0 ? ["  none"] : render())];
}

/** The default output of `holdfast inspect`: sections readable in an 80-column terminal. */
export function formatSnapshot(s: Snapshot, width = 80): string {
  const out: string[] = [];
  const filter = [
    s.filters.key === null ? "" : ` key=${s.filters.key}`,
    s.filters.kind === null ? "" : ` kind=${s.filters.kind}`,
  ].join("");
  const status = s.healthy ? "healthy" : `UNHEALTHY: ${s.problems.join(", ")}`;
  // The database's time: the snapshot's times (next ticks, ages) are read on its clock.
  const at = s.clock.serverAt.replace(/\.\d+Z$/, "Z");
  out.push(clip(`holdfast @ ${s.database}${filter}  ${at}`, width));
  out.push(`status: ${status}`.slice(0, width), "");

  out.push(
    ...counted("HOLDERS", s.holders, () => [
      ...table(
        [
          { title: "KEY", flex: true },
          { title: "KIND" },
          { title: "TASK", align: "right" },
          { title: "ATT", align: "right" },
          { title: "HELD FOR", align: "right" },
          { title: "PID", align: "right" },
        ],
        s.holders.map((h) => [
          h.key,
          text(h.kind),
          h.taskId === null ? "-" : String(h.taskId),
          h.attempt === null ? "-" : `${h.attempt}/${h.maxAttempts}`,
          formatDuration(h.heldForMs),
          String(h.pid),
        ]),
        width,
        s.holders.map((h) => {
          // A holdfast worker's lock session is named after it; name the worker when it is not.
          const usual = h.worker !== null && h.applicationName === sessionName("lock", h.worker);
          const worker = usual ? "" : `  worker ${text(h.worker)}`;
          // The task's checkpoint first (the line is clipped to the width): progress, age, note.
          const progress = h.progress === null ? "" : `${Math.round(h.progress * 100)}% `;
          const note = h.note === null ? "" : ` ${JSON.stringify(h.note)}`;
          const checkpoint =
            h.checkpointAgeMs === null
              ? ""
              : `${progress}checkpoint ${formatDuration(h.checkpointAgeMs)} ago${note}  `;
          return `${checkpoint}fence ${h.fence ?? "-"}  client ${text(h.clientAddr)}  app ${text(h.applicationName)}${worker}`;
        }),
      ),
    ]),
  );

  out.push(
    "",
    ...counted("WAITERS", s.waiters, () => [
      ...table(
        [
          { title: "KEY", flex: true },
          { title: "PID", align: "right" },
          { title: "WAITING", align: "right" },
          { title: "BLOCKED BY" },
          { title: "APP" },
        ],
        s.waiters.map((w) => [
          w.key,
          String(w.pid),
          formatDuration(w.waitingMs),
          w.blockedBy.join(",") || "-",
          text(w.applicationName),
        ]),
        width,
      ),
    ]),
  );

  out.push(
    "",
    ...counted("ORPHANS", s.orphans, () => [
      ...table(
        [
          { title: "KEY", flex: true },
          { title: "KIND" },
          { title: "TASK", align: "right" },
          { title: "ATT", align: "right" },
          { title: "ATTEMPT AGE", align: "right" },
        ],
        s.orphans.map((o) => [
          o.key,
          o.kind,
          String(o.taskId),
          String(o.attempt),
          formatDuration(o.runningForMs),
        ]),
        width,
        s.orphans.map(
          (o) => `fence ${o.fence}  worker ${text(o.worker)}  holder pid ${o.holderPid ?? "-"}`,
        ),
      ),
      "  The holder lost the key's lock within the attempt's age (its session ended, or a",
      "  pooler reset it). A live worker's sweeper requeues orphans within its sweep",
      "  interval: if they stay, no worker is running.",
    ]),
  );

  out.push("", "QUEUE");
  if (s.queue.length === 0) out.push("  no kinds defined");
  else
    out.push(
      ...table(
        [
          { title: "KIND", flex: true },
          { title: "PENDING", align: "right" },
          { title: "RUNNING", align: "right" },
          { title: "DELAYED", align: "right" },
          { title: "DEAD", align: "right" },
          { title: "OLDEST PENDING", align: "right" },
          { title: "SLOTS", align: "right" },
        ],
        s.queue.map((q) => [
          q.kind,
          int(q.pending),
          int(q.running),
          int(q.delayed),
          int(q.deadLettered),
          formatDuration(q.oldestPendingMs),
          q.slots === null ? "-" : `${q.slots.used}/${q.slots.max}`,
        ]),
        width,
      ),
    );

  if (s.schedules.length > 0)
    out.push(
      "",
      `SCHEDULES (${s.schedules.length})`,
      ...table(
        [
          { title: "NAME", flex: true },
          { title: "CRON" },
          { title: "KIND" },
          { title: "NEXT TICK" },
          { title: "IN", align: "right" },
          { title: "LAST TICK" },
          { title: "LATE", align: "right" },
        ],
        s.schedules.map((x) => [
          x.name,
          x.timezone ? `${x.cron} ${x.timezone}` : x.cron,
          x.kind,
          x.nextAt?.replace(/\.\d+Z$/, "Z") ?? "-",
          x.nextAt === null
            ? "-"
            : formatDuration(Math.max(0, Date.parse(x.nextAt) - Date.parse(s.clock.serverAt))),
          x.lastTickAt?.replace(/\.\d+Z$/, "Z") ?? "-",
          x.lastLateMs === null ? "-" : formatDuration(x.lastLateMs),
        ]),
        width,
      ),
    );

  if (s.limits.length > 0)
    out.push(
      "",
      `LIMITS (${s.limits.length})`,
      ...table(
        [
          { title: "LIMIT", flex: true },
          { title: "USED", align: "right" },
          { title: "OF", align: "right" },
          { title: "PER", align: "right" },
          { title: "RESERVED", align: "right" },
          { title: "CHARGED", align: "right" },
          { title: "RUNS", align: "right" },
          { title: "WAITING", align: "right" },
          { title: "ROOM IN", align: "right" },
          { title: "CLOSED FOR", align: "right" },
          { title: "KINDS" },
        ],
        s.limits.map((l) => {
          const until = (iso: string | null) =>
            iso === null ? "-" : formatDuration(Math.max(0, Date.parse(iso) - Date.parse(s.at)));
          return [
            l.name,
            int(l.used),
            int(l.units),
            formatDuration(l.perMs),
            int(l.reserved),
            int(l.charged),
            int(l.runs),
            int(l.waiting),
            until(l.roomAt),
            until(l.closedUntil),
            l.kinds.join(","),
          ];
        }),
        width,
      ),
    );

  const a = s.capacity.advisoryLocks;
  const c = s.capacity.connections;
  const pct = (n: number, of: number) => (of > 0 ? `${((100 * n) / of).toFixed(1)}%` : "-");
  const v = s.versions;
  const schemaNote =
    v.schema === null
      ? "unknown"
      : v.schema < v.releaseSchema
        ? `${v.schema}, behind this package's ${v.releaseSchema}: run migrate`
        : v.schema > v.releaseSchema
          ? `${v.schema}, migrated by a newer release than this package's ${v.releaseSchema}`
          : v.schema;
  out.push(
    "",
    "VERSIONS",
    clip(`  package ${v.package}, schema ${schemaNote}`, width),
    "",
    "CAPACITY",
    clip(
      `  advisory locks  ${int(a.used)} of ${int(a.lockTableSize)} (${pct(a.used, a.lockTableSize)}), ${int(a.holdfast)} holdfast keys held here`,
      width,
    ),
    clip(
      `  lock table      ${a.maxLocksPerTransaction} locks/transaction x (${c.max} connections + ${a.maxPreparedTransactions} prepared)`,
      width,
    ),
    clip(
      `  connections     ${int(c.used)} of ${int(c.max)} (${pct(c.used, c.max)}); holdfast here: ${c.lockSessions} lock, ${c.listenSessions} listen`,
      width,
    ),
    clip(`  clock           ${formatOffset(s.clock.offsetMs)}`, width),
  );
  return `${out.join("\n")}\n`;
}

/** This host's clock against the database's, e.g. "this host 2.5 s behind the database". */
export function formatOffset(offsetMs: number): string {
  const abs = Math.abs(offsetMs);
  const size = abs < 1_000 ? `${abs} ms` : `${(abs / 1_000).toFixed(1)} s`;
  if (abs === 0) return "this host agrees with the database";
  return `this host ${size} ${offsetMs > 0 ? "behind" : "ahead of"} the database`;
}
