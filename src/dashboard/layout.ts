// The page shell: inline CSS and one inline script (allowed by a per-response CSP nonce) that
// redraws the live part every few seconds. Nothing is fetched from anywhere but this server.
import { type Html, html, raw } from "./html.js";

export interface Notice {
  tone: "ok" | "error";
  text: string;
}

export interface Shell {
  title: string;
  /** Shown in the header beside the title (database, status). */
  header: Html;
  /** The live part; `refreshUrl` returns a new copy of it (GET with x-holdfast-fragment: 1);
   *  null: a page that does not redraw (a 404 stays what it is). */
  live: Html;
  refreshUrl: string | null;
  refreshMs: number;
  notice?: Notice | undefined;
  nonce: string;
}

const css = raw(`
:root { --fg: #1d2430; --muted: #5d6776; --line: #dfe3ea; --bg: #f5f6f8; --card: #fff;
  --ok: #2e7d4f; --bad: #b3261e; --warn: #a35b00; --link: #1f5fa8; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); background: var(--bg); }
header { display: flex; flex-wrap: wrap; align-items: center; gap: 8px 16px; padding: 10px 20px;
  background: #1d2430; color: #fff; }
header h1 { font-size: 17px; margin: 0; font-weight: 650; letter-spacing: .2px; }
header h1 a { color: #fff; text-decoration: none; }
header .meta { color: #c5cbd5; font-size: 13px; }
header .spacer { flex: 1; }
.pill { display: inline-block; padding: 1px 9px; border-radius: 10px; font-size: 12px; font-weight: 600; }
.pill.ok { background: #d8f0e1; color: #1b5e37; } .pill.bad { background: #fbdcd9; color: #8c1d16; }
.pill.neutral { background: #e4e8ee; color: #394150; } .pill.warn { background: #fdebd0; color: #7a4300; }
#conn { font-size: 12px; color: #c5cbd5; } #conn.offline { color: #ffb4ab; font-weight: 600; }
main { padding: 14px 20px 40px; max-width: 1400px; }
nav.toc { display: flex; flex-wrap: wrap; gap: 6px; margin: 0 0 12px; }
nav.toc a { padding: 3px 10px; border: 1px solid var(--line); border-radius: 14px; background: var(--card);
  color: var(--fg); text-decoration: none; font-size: 13px; }
nav.toc a.bad { border-color: #efb1ab; color: var(--bad); font-weight: 600; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; margin: 0 0 14px;
  padding: 10px 14px 12px; }
section h2 { font-size: 15px; margin: 2px 0 8px; display: flex; gap: 8px; align-items: baseline; }
section h2 .count { color: var(--muted); font-weight: 500; }
section.bad { border-color: #efb1ab; box-shadow: inset 3px 0 0 var(--bad); }
.note { color: var(--muted); font-size: 12.5px; margin: 6px 0 0; }
.empty { color: var(--muted); margin: 2px 0; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th { text-align: left; font-weight: 600; color: var(--muted); font-size: 12px; border-bottom: 1px solid var(--line);
  padding: 4px 8px; white-space: nowrap; }
td { padding: 5px 8px; border-bottom: 1px solid #eef0f4; vertical-align: top; white-space: nowrap; }
td.wrap { white-space: normal; min-width: 22ch; }
section { overflow-x: auto; }
tr:last-child td { border-bottom: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.key { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px;
  white-space: normal; overflow-wrap: anywhere; min-width: 24ch; }
td.err { color: var(--bad); max-width: 420px; }
.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
a { color: var(--link); }
.grid2 { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
.card h3 { font-size: 13.5px; margin: 0 0 4px; display: flex; justify-content: space-between; gap: 8px; }
.card h3 .runs { color: var(--muted); font-weight: 500; }
h3.sub { font-size: 13.5px; margin: 14px 0 4px; }
.statusline { margin: 0 0 10px; }
.statusline .meta { color: var(--muted); font-size: 13px; margin-left: 6px; }
svg.chart { width: 100%; height: auto; display: block; }
svg.durations { max-width: 720px; }
svg .grid { stroke: #e8ebf0; } svg .axis { fill: #7a8494; font-size: 10px; }
svg .label, svg .value { fill: var(--fg); font-size: 12px; } svg .hit { fill: transparent; }
svg .hit:hover { fill: rgba(31, 95, 168, .08); }
.legend { display: flex; flex-wrap: wrap; gap: 4px 12px; font-size: 12px; color: var(--muted); margin-top: 2px; }
.legend i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; vertical-align: -1px; }
.notice { margin: 0 0 12px; padding: 8px 12px; border-radius: 6px; font-weight: 500; }
.notice.ok { background: #d8f0e1; color: #1b5e37; } .notice.error { background: #fbdcd9; color: #8c1d16; }
form.action { display: inline; margin: 0; }
button { font: inherit; font-size: 12.5px; padding: 2px 10px; border-radius: 5px; border: 1px solid #9fb3c8;
  background: #f3f7fb; color: #1f4f80; cursor: pointer; }
button.danger { border-color: #e0a39d; background: #fdf3f2; color: var(--bad); }
button:hover { filter: brightness(.96); }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; margin: 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; }
pre { background: #f6f8fa; border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; overflow: auto;
  max-height: 360px; font-size: 12.5px; margin: 4px 0 0; white-space: pre-wrap; word-break: break-word; }
details summary { cursor: pointer; color: var(--link); font-size: 12.5px; }
.actions { display: flex; gap: 8px; align-items: center; margin-top: 10px; }
`);

/** Redraws the live part; keeps open <details> open across redraws. */
const script = `
const live = document.getElementById("live");
const conn = document.getElementById("conn");
const every = Number(live.dataset.every);
async function redraw() {
  // Not while the tab is hidden, nor under a pointer on a button: a click must hit what it aimed at.
  if (!document.hidden && !live.querySelector("form.action:hover")) {
    try {
      const r = await fetch(live.dataset.refresh, { headers: { "x-holdfast-fragment": "1" } });
      // Any status: an error's fragment says what is wrong (Postgres down...) until it is not.
      const open = [...live.querySelectorAll("details[open][id]")].map((d) => d.id);
      live.innerHTML = await r.text();
      for (const id of open) document.getElementById(id)?.setAttribute("open", "");
      conn.textContent = r.ok ? "live" : "live (error " + r.status + ")";
      conn.className = r.ok ? "" : "offline";
    } catch (e) {
      conn.textContent = "cannot reach the dashboard (" + e.message + "), retrying";
      conn.className = "offline";
    }
  }
  setTimeout(redraw, every);
}
setTimeout(redraw, every);
`;

export function page(s: Shell): Html {
  return html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${s.title}</title>
<style>${css}</style>
${s.refreshUrl === null ? null : html`<noscript><meta http-equiv="refresh" content="${Math.ceil(s.refreshMs / 1000) + 3}"></noscript>`}
</head>
<body>
<header><h1><a href="/">holdfast</a></h1>${s.header}<span class="spacer"></span><span id="conn">${s.refreshUrl === null ? "" : "live"}</span></header>
<main>
${s.notice ? html`<div class="notice ${s.notice.tone}" role="status">${s.notice.text}</div>` : null}
<div id="live" data-refresh="${s.refreshUrl ?? ""}" data-every="${s.refreshMs}">${s.live}</div>
</main>
${s.refreshUrl === null ? null : html`<script nonce="${s.nonce}">${raw(script)}</script>`}
</body>
</html>
`;
}
