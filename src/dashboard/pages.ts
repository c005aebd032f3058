// What the dashboard shows: the overview's sections (one entry each in `overviewSections`, so a
// new one, such as schedules or per-kind caps, is one more entry) and a task's page.

import { formatDuration } from "../inspect/format.js";
import type { Activity, TaskDetail, WaitingTask } from "../inspect/history.js";
import type { Snapshot } from "../inspect/snapshot.js";
import type { DeadLetter } from "../types.js";
import { activityChart, durationChart, series, totals } from "./charts.js";
import { type Html, type HtmlValue, html } from "./html.js";

/** Everything the overview shows, read in one read-only transaction (activity may be older). */
export interface Overview {
  snapshot: Snapshot;
  waiting: WaitingTask[];
  deadLetters: DeadLetter[];
  activity: Activity;
}

/** How the page may offer actions. */
export interface ActionMode {
  /** --allow-actions was given. */
  enabled: boolean;
  /** This browser presented the token: buttons are shown. */
  authorized: boolean;
}

export interface Section<T> {
  id: string;
  title: string;
  /** Rows shown in the title and the table of contents; null for no count. */
  count: (data: T) => number | null;
  /** A problem worth a red border (orphans, dead letters). */
  bad?: (data: T) => boolean;
  render: (data: T, actions: ActionMode) => Html;
}

const int = (n: number) => n.toLocaleString("en-US");
const dash = (v: string | number | null | undefined): string =>
  v === null || v === undefined || v === "" ? "–" : String(v);
/** "2026-11-27 09:31:02 UTC". */
export const utc = (d: Date | string | null): string =>
  d === null ? "–" : `${new Date(d).toISOString().slice(0, 19).replace("T", " ")} UTC`;
const ago = (d: Date | null, now: number): string =>
  d === null ? "–" : `${formatDuration(Math.max(0, now - new Date(d).getTime()))} ago`;
const taskLink = (id: number | null): HtmlValue =>
  id === null ? "–" : html`<a href="/tasks/${id}">${id}</a>`;
const empty = (text: string) => html`<p class="empty">${text}</p>`;

/** A form posting one action; `seen` lets the server refuse it if the task has moved on. */
export function actionButton(
  task: { id: number; state: string; attempt: number },
  action: "retry" | "cancel",
  actions: ActionMode,
): Html | null {
  if (!actions.authorized) return null;
  const label = action === "retry" ? "Retry" : "Cancel";
  return html`<form class="action" method="post" action="/tasks/${task.id}/${action}"><input type="hidden" name="seen" value="${task.state}:${task.attempt}"><button type="submit" class="${action === "cancel" ? "danger" : ""}" data-action="${action}" data-task="${task.id}">${label}</button></form>`;
}

const holders: Section<Overview> = {
  id: "running",
  title: "Running",
  count: (o) => o.snapshot.holders.length,
  render: (o) =>
    o.snapshot.holders.length === 0
      ? empty("No key is held: nothing runs.")
      : html`<table><thead><tr><th>Key</th><th>Kind</th><th class="num">Task</th><th class="num">Attempt</th><th class="num">Held for</th><th class="num">Progress</th><th class="num">Checkpoint age</th><th class="num">Fence</th><th>Worker</th><th class="num">PID</th><th>Application</th><th>Client</th></tr></thead><tbody>${o.snapshot.holders.map(
          (h) =>
            html`<tr data-task="${h.taskId}"><td class="key">${h.key}</td><td>${dash(h.kind)}</td><td class="num">${taskLink(h.taskId)}</td><td class="num">${h.attempt === null ? "–" : `${h.attempt} / ${h.maxAttempts}`}</td><td class="num held">${formatDuration(h.heldForMs)}</td><td class="num progress" title="${dash(h.note)}">${percent(h.progress)}</td><td class="num ckpt-age">${formatDuration(h.checkpointAgeMs)}</td><td class="num mono">${dash(h.fence)}</td><td>${dash(h.worker)}</td><td class="num">${h.pid}</td><td>${dash(h.applicationName)}</td><td>${dash(h.clientAddr)}</td></tr>`,
        )}</tbody></table>`,
};

const orphans: Section<Overview> = {
  id: "orphans",
  title: "Orphaned",
  count: (o) => o.snapshot.orphans.length,
  bad: (o) => o.snapshot.orphans.length > 0,
  render: (o) =>
    o.snapshot.orphans.length === 0
      ? empty("None: every running task has a live holder.")
      : html`<table><thead><tr><th>Key</th><th>Kind</th><th class="num">Task</th><th class="num">Attempt</th><th class="num">Attempt age</th><th class="num">Fence</th><th>Worker</th><th class="num">Holder PID</th></tr></thead><tbody>${o.snapshot.orphans.map(
          (t) =>
            html`<tr data-task="${t.taskId}"><td class="key">${t.key}</td><td>${t.kind}</td><td class="num">${taskLink(t.taskId)}</td><td class="num">${t.attempt}</td><td class="num">${formatDuration(t.runningForMs)}</td><td class="num mono">${t.fence}</td><td>${dash(t.worker)}</td><td class="num">${dash(t.holderPid)}</td></tr>`,
        )}</tbody></table><p class="note">Their holder no longer holds the key's lock (its session ended, or a pooler reset it); a live worker's sweep requeues them within its sweep interval. If they stay, no worker is running.</p>`,
};

const waiting: Section<Overview> = {
  id: "waiting",
  title: "Waiting to start",
  count: (o) => o.waiting.length,
  render: (o) =>
    o.waiting.length === 0
      ? empty("No ready task is waiting.")
      : html`<table><thead><tr><th>Key</th><th>Kind</th><th class="num">Task</th><th class="num">Next attempt</th><th class="num">Ready for</th><th>Why</th><th>Previous error</th></tr></thead><tbody>${o.waiting.map(
          (t) =>
            html`<tr data-task="${t.id}"><td class="key">${t.key}</td><td>${t.kind}</td><td class="num">${taskLink(t.id)}</td><td class="num">${t.attempt + 1} / ${t.maxAttempts}</td><td class="num">${formatDuration(t.waitingMs)}</td><td class="wrap">${t.keyBusy ? "its key is running another task" : t.behind !== null ? html`behind task ${taskLink(t.behind)} in its key's order` : "no worker has taken it yet"}</td><td class="wrap ${t.lastError ? "err" : ""}">${dash(t.lastError)}</td></tr>`,
        )}</tbody></table><p class="note">The ${o.waiting.length === 1 ? "task" : `${o.waiting.length} tasks`} ready longest; the queue below counts them all.</p>`,
};

const sessionWaiters: Section<Overview> = {
  id: "blocked",
  title: "Sessions blocked on a key lock",
  count: (o) => o.snapshot.waiters.length,
  render: (o) =>
    o.snapshot.waiters.length === 0
      ? empty("None (holdfast workers never block on a lock; this lists other sessions that do).")
      : html`<table><thead><tr><th>Key</th><th class="num">PID</th><th class="num">Waiting</th><th>Blocked by</th><th>Application</th><th>Client</th></tr></thead><tbody>${o.snapshot.waiters.map(
          (w) =>
            html`<tr><td class="key">${w.key}</td><td class="num">${w.pid}</td><td class="num">${formatDuration(w.waitingMs)}</td><td>${w.blockedBy.join(", ") || "–"}</td><td>${dash(w.applicationName)}</td><td>${dash(w.clientAddr)}</td></tr>`,
        )}</tbody></table>`,
};

const queue: Section<Overview> = {
  id: "queue",
  title: "Queue by kind",
  count: () => null,
  render: (o) => {
    if (o.snapshot.queue.length === 0) return empty("No kind is defined yet.");
    const runs = new Map(o.activity.kinds.map((k) => [k.kind, k]));
    return html`<table><thead><tr><th>Kind</th><th class="num">Ready</th><th class="num">Running</th><th class="num">Slots</th><th class="num">Delayed</th><th class="num">Dead</th><th class="num">Oldest ready</th><th class="num">Runs (1 h)</th><th class="num">Run p50</th><th class="num">Run p95</th></tr></thead><tbody>${o.snapshot.queue.map(
      (q) => {
        const a = runs.get(q.kind);
        return html`<tr><td>${q.kind}</td><td class="num">${int(q.pending)}</td><td class="num">${int(q.running)}</td><td class="num">${q.slots === null ? "-" : `${q.slots.used}/${q.slots.max}`}</td><td class="num">${int(q.delayed)}</td><td class="num">${int(q.deadLettered)}</td><td class="num">${formatDuration(q.oldestPendingMs)}</td><td class="num">${int(a?.runs ?? 0)}</td><td class="num">${formatDuration(a?.p50Ms ?? null)}</td><td class="num">${formatDuration(a?.p95Ms ?? null)}</td></tr>`;
      },
    )}</tbody></table><p class="note">Slots: runs holding one of a capped kind's slots / its maxRunning. Delayed: waiting for their run time or a retry's backoff. Run times: attempts that succeeded or failed in the last hour.</p>`;
  },
};

const activity: Section<Overview> = {
  id: "activity",
  title: "Attempts per minute, last hour",
  count: () => null,
  render: (o) => {
    const kinds = o.activity.kinds;
    if (kinds.length === 0) return empty("No kind is defined yet.");
    const durations = durationChart(o.activity);
    return html`<div class="grid2">${kinds.map((k) => {
      const t = totals(k);
      return html`<div class="card"><h3><span>${k.kind}</span><span class="runs">${k.runs > 0 ? `run p50 ${formatDuration(k.p50Ms)} · p95 ${formatDuration(k.p95Ms)}` : "no run ended"}</span></h3>${activityChart(k)}<div class="legend">${series.map((s) => html`<span><i style="background:${s.colour}"></i>${s.name} ${int(t[s.name])}</span>`)}</div></div>`;
    })}</div>${durations ? html`<h3 class="sub">Run time per kind (p50 dark, p95 light)</h3>${durations}` : null}<p class="note">Times in UTC; hover a minute for its counts.</p>`;
  },
};

const deadLetters: Section<Overview> = {
  id: "dead",
  title: "Dead letters",
  count: (o) => o.snapshot.queue.reduce((n, q) => n + q.deadLettered, 0),
  bad: (o) => o.deadLetters.length > 0,
  render: (o, actions) => {
    if (o.deadLetters.length === 0) return empty("None: no task has used all its attempts.");
    const now = Date.parse(o.snapshot.at);
    return html`<table><thead><tr><th>Key</th><th>Kind</th><th class="num">Task</th><th class="num">Attempts</th><th>Last error</th><th>Died</th>${actions.authorized ? html`<th></th>` : null}</tr></thead><tbody>${o.deadLetters.map(
      (d) =>
        html`<tr data-task="${d.id}"><td class="key">${d.key}</td><td>${d.kind}</td><td class="num">${taskLink(d.id)}</td><td class="num">${d.attempt} / ${d.maxAttempts}</td><td class="wrap ${d.lastError?.message ? "err" : ""}">${dash(d.lastError?.message)}</td><td title="${utc(d.finishedAt)}">${ago(d.finishedAt, now)}</td>${actions.authorized ? html`<td>${actionButton({ id: d.id, state: "failed", attempt: d.attempt }, "retry", actions)}</td>` : null}</tr>`,
    )}</tbody></table><p class="note">The latest ${o.deadLetters.length}; each task's page has its attempts and errors.${actions.enabled && !actions.authorized ? " Retry needs the token printed when the dashboard started." : ""}</p>`;
  },
};

const schedules: Section<Overview> = {
  id: "schedules",
  title: "Schedules",
  count: (o) => o.snapshot.schedules.length,
  render: (o) => {
    if (o.snapshot.schedules.length === 0) return empty("No recurring schedule is declared.");
    const now = Date.parse(o.snapshot.at);
    const inMs = (at: string | null) =>
      at === null ? "–" : `in ${formatDuration(Math.max(0, Date.parse(at) - now))}`;
    return html`<table><thead><tr><th>Name</th><th>Cron</th><th>Time zone</th><th>Kind</th><th>Key</th><th>Next tick</th><th>Last tick</th><th class="num">Late</th><th class="num">Task</th></tr></thead><tbody>${o.snapshot.schedules.map(
      (x) =>
        html`<tr data-schedule="${x.name}"><td>${x.name}</td><td class="mono">${x.cron}</td><td>${x.timezone ?? "UTC"}</td><td>${x.kind}</td><td class="key">${x.key}</td><td title="${utc(x.nextAt)}">${inMs(x.nextAt)}</td><td title="${utc(x.lastTickAt)}">${x.lastTickAt === null ? "–" : ago(new Date(x.lastTickAt), now)}</td><td class="num late">${formatDuration(x.lastLateMs)}</td><td class="num">${taskLink(x.lastTaskId)}</td></tr>`,
    )}</tbody></table><p class="note">Late: how long after its time the latest tick was enqueued. The sweep leader enqueues each tick once, whoever leads.</p>`;
  },
};

const limits: Section<Overview> = {
  id: "limits",
  title: "Limits",
  count: (o) => o.snapshot.limits.length,
  render: (o) => {
    if (o.snapshot.limits.length === 0) return empty("No limit is declared.");
    const now = Date.parse(o.snapshot.at);
    const inMs = (at: string | null) =>
      at === null ? "–" : `in ${formatDuration(Math.max(0, Date.parse(at) - now))}`;
    return html`<table><thead><tr><th>Limit</th><th class="num">Used</th><th class="num">Of</th><th class="num">Per</th><th class="num">Reserved</th><th class="num">Charged</th><th class="num">Runs</th><th class="num">Waiting</th><th>Room</th><th>Closed</th><th>Kinds</th></tr></thead><tbody>${o.snapshot.limits.map(
      (l) =>
        html`<tr data-limit="${l.name}"><td>${l.name}</td><td class="num">${int(l.used)}</td><td class="num">${int(l.units)}</td><td class="num">${formatDuration(l.perMs)}</td><td class="num">${int(l.reserved)}</td><td class="num">${int(l.charged)}</td><td class="num">${int(l.runs)}</td><td class="num">${int(l.waiting)}</td><td title="${utc(l.roomAt)}">${l.roomAt === null ? "now" : inMs(l.roomAt)}</td><td title="${utc(l.closedUntil)}" class="${l.closedUntil ? "err" : ""}">${l.closedUntil === null ? "open" : `for ${inMs(l.closedUntil).slice(3)}`}</td><td>${l.kinds.join(", ")}</td></tr>`,
    )}</tbody></table><p class="note">Used: what the sliding window holds now, reservations of runs not charged yet plus what runs were charged. Waiting: ready tasks of its kinds that cannot start for want of room. Closed: a provider's 429 (ThrottledError) closed it for every worker.</p>`;
  },
};

const capacity: Section<Overview> = {
  id: "capacity",
  title: "Capacity",
  count: () => null,
  render: (o) => {
    const a = o.snapshot.capacity.advisoryLocks;
    const c = o.snapshot.capacity.connections;
    const pct = (n: number, of: number) => (of > 0 ? `${((100 * n) / of).toFixed(1)} %` : "–");
    return html`<dl class="facts"><dt>Advisory locks</dt><dd>${int(a.used)} of ${int(a.lockTableSize)} (${pct(a.used, a.lockTableSize)}); ${int(a.holdfast)} held by holdfast in this database</dd><dt>Lock table</dt><dd>${a.maxLocksPerTransaction} locks per transaction × (${int(c.max)} connections + ${a.maxPreparedTransactions} prepared)</dd><dt>Connections</dt><dd>${int(c.used)} of ${int(c.max)} (${pct(c.used, c.max)}); holdfast worker sessions here: ${c.lockSessions} lock, ${c.listenSessions} listen</dd></dl>`;
  },
};

/** The overview's sections, in page order. */
export const overviewSections: Section<Overview>[] = [
  holders,
  orphans,
  waiting,
  deadLetters,
  queue,
  activity,
  schedules,
  limits,
  sessionWaiters,
  capacity,
];

function status(s: Snapshot): Html {
  return html`<div class="statusline"><span class="pill ${s.healthy ? "ok" : "bad"}">${s.healthy ? "healthy" : `unhealthy: ${s.problems.join(", ")}`}</span> <span class="meta">as of ${utc(s.at)}</span></div>`;
}

function renderSections<T>(sections: Section<T>[], data: T, actions: ActionMode): Html {
  const parts = sections.map((s) => ({ s, n: s.count(data), bad: s.bad?.(data) ?? false }));
  return html`<nav class="toc">${parts.map(
    ({ s, n, bad }) =>
      html`<a href="#${s.id}" class="${bad ? "bad" : ""}">${s.title}${n === null ? "" : ` (${int(n)})`}</a>`,
  )}</nav>${parts.map(
    ({ s, n, bad }) =>
      html`<section id="${s.id}" class="${bad ? "bad" : ""}"><h2>${s.title}${n === null ? null : html` <span class="count">${int(n)}</span>`}</h2>${s.render(data, actions)}</section>`,
  )}`;
}

/** The live part of the overview. */
export function overviewLive(o: Overview, actions: ActionMode): Html {
  return html`${status(o.snapshot)}${renderSections(overviewSections, o, actions)}`;
}

/** The live part of a task's page; `snapshot` is the inspector's view filtered to its key. */
export function taskLive(t: TaskDetail, snapshot: Snapshot, actions: ActionMode): Html {
  const now = Date.parse(snapshot.at);
  const holder = snapshot.holders.find((h) => h.taskId === t.id);
  const orphan = snapshot.orphans.find((o) => o.taskId === t.id);
  const stateText =
    t.state === "running"
      ? orphan
        ? "running, but its holder no longer holds the key's lock (orphaned): the next sweep requeues it"
        : holder
          ? `running for ${formatDuration(holder.heldForMs)} on ${dash(t.worker)} (pid ${holder.pid})`
          : "running"
      : t.state === "pending"
        ? new Date(t.runAt).getTime() > now
          ? `pending, not before ${utc(t.runAt)}`
          : `pending, ready for ${formatDuration(now - new Date(t.runAt).getTime())}`
        : t.state === "failed"
          ? "dead letter: all attempts used"
          : t.state;
  const buttons = [
    t.state === "failed" || t.state === "cancelled" ? actionButton(t, "retry", actions) : null,
    t.state === "pending" || t.state === "running" ? actionButton(t, "cancel", actions) : null,
  ].filter((b) => b !== null);
  const pill =
    t.state === "failed" ? "bad" : t.state === "succeeded" ? "ok" : orphan ? "warn" : "neutral";
  const facts = html`<dl class="facts">
<dt>State</dt><dd><span class="pill ${pill}" id="task-state">${t.state}</span> ${stateText}${t.cancelRequested && t.state === "running" ? " (cancel requested)" : ""}</dd>
<dt>Key</dt><dd class="mono">${t.key}</dd>
<dt>Kind</dt><dd>${t.kind}</dd>
<dt>Attempt</dt><dd>${t.attempt} of ${t.maxAttempts}</dd>
<dt>Priority</dt><dd>${t.priority}</dd>
<dt>Run at</dt><dd>${utc(t.runAt)}</dd>
<dt>Place in key order</dt><dd>${utc(t.placeAt)}</dd>
<dt>Created</dt><dd>${utc(t.createdAt)} (${ago(t.createdAt, now)})</dd>
<dt>Started</dt><dd>${utc(t.startedAt)}</dd>
<dt>Finished</dt><dd>${utc(t.finishedAt)}</dd>
<dt>Dedupe key</dt><dd class="mono">${dash(t.dedupeKey)}</dd>
<dt>Fence</dt><dd class="mono">${dash(t.fence)} (the key's latest: ${t.keyFence}${t.fence !== null && t.keyFence > t.fence ? ", a newer claim exists" : ""})</dd>
</dl>`;
  const attempts =
    t.attempts.length === 0
      ? empty("No attempt yet.")
      : html`<table><thead><tr><th class="num">Attempt</th><th>Outcome</th><th class="num">Fence</th><th>Worker</th><th class="num">PID</th><th>Started</th><th class="num">Ran for</th><th>Error</th></tr></thead><tbody>${t.attempts.map(
          (a) =>
            html`<tr><td class="num">${a.attempt}</td><td>${a.outcome ?? "running"}</td><td class="num mono">${a.fence}</td><td>${dash(a.worker)}</td><td class="num">${dash(a.pid)}</td><td>${utc(a.startedAt)}</td><td class="num">${formatDuration((a.finishedAt ? new Date(a.finishedAt).getTime() : now) - new Date(a.startedAt).getTime())}</td><td class="wrap ${a.error ? "err" : ""}">${dash(a.error?.message)}${a.error?.stack ? html`<details id="stack-${a.attempt}"><summary>stack</summary><pre>${a.error.stack}</pre></details>` : null}</td></tr>`,
        )}</tbody></table><p class="note">Each claim of a key takes a higher fence; a run whose fence is not the key's latest can no longer finish or write.</p>`;
  const keyQueue =
    t.keyQueue.length === 0
      ? empty("The key has no open task.")
      : html`<table><thead><tr><th class="num">Task</th><th>Kind</th><th>State</th><th class="num">Priority</th><th>Place</th><th>Run at</th><th class="num">Attempt</th></tr></thead><tbody>${t.keyQueue.map(
          (q) =>
            html`<tr><td class="num">${q.id === t.id ? html`<strong>${q.id}</strong>` : taskLink(q.id)}</td><td>${q.kind}</td><td>${q.state}</td><td class="num">${q.priority}</td><td>${utc(q.placeAt)}</td><td>${utc(q.runAt)}</td><td class="num">${q.attempt} / ${q.maxAttempts}</td></tr>`,
        )}</tbody></table>`;
  const checkpoint = t.checkpoint
    ? html`<dl class="facts">
<dt>Progress</dt><dd>${percent(progressOf(t.checkpoint.state))}</dd>
<dt>Note</dt><dd>${dash(noteOf(t.checkpoint.state))}</dd>
<dt>Written</dt><dd>${utc(t.checkpoint.at)} (${ago(t.checkpoint.at, now)}) ${t.checkpoint.fence === t.fence && t.state === "running" ? "by the running attempt" : `under fence ${t.checkpoint.fence}: the next attempt resumes from it`}</dd>
</dl><pre>${JSON.stringify(t.checkpoint.state, null, 2)}</pre>`
    : empty("No checkpoint: a new attempt starts from the beginning.");
  return html`<section id="task"><h2>Task ${t.id}</h2>${facts}${buttons.length > 0 ? html`<div class="actions">${buttons}</div>` : null}</section>
<section id="payload"><h2>Payload</h2><pre>${JSON.stringify(t.payload, null, 2)}</pre></section>
<section id="checkpoint"><h2>Checkpoint</h2>${checkpoint}</section>
${t.lastError ? html`<section id="last-error" class="${t.state === "failed" ? "bad" : ""}"><h2>Last error</h2><p class="err">${dash(t.lastError.message)}</p>${t.lastError.stack ? html`<pre>${t.lastError.stack}</pre>` : null}</section>` : null}
<section id="attempts"><h2>Attempts and fences <span class="count">${t.attempts.length}</span></h2>${attempts}</section>
<section id="key-queue"><h2>The key's open tasks, in start order</h2>${keyQueue}</section>`;
}

/** A checkpoint's progress as a percentage ("–" when it has none). */
function percent(p: number | null): string {
  return p === null ? "–" : `${Math.round(p * 100)}%`;
}

function progressOf(state: unknown): number | null {
  const p = (state as { progress?: unknown } | null)?.progress;
  return typeof p === "number" ? p : null;
}

function noteOf(state: unknown): string | null {
  const n = (state as { note?: unknown } | null)?.note;
  return typeof n === "string" ? n : null;
}

/** A page for an error the operator can act on (unknown task, stale action...). */
export function messageLive(title: string, text: string): Html {
  return html`<section class="bad"><h2>${title}</h2><p>${text}</p><p><a href="/">Back to the overview</a></p></section>`;
}
