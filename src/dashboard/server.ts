// The dashboard's HTTP layer on node:http: a handful of typed routes, read-only unless
// actions are enabled, and every failure an operator can cause answered with a clear 4xx.
import { randomBytes, timingSafeEqual } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import type { Logger } from "pino";
import { HoldfastError, TaskNotFoundError, translateError } from "../errors.js";
import type { Holdfast } from "../holdfast.js";
import {
  type Activity,
  readActivity,
  readDeadLetters,
  readTask,
  readWaiting,
  type TaskDetail,
} from "../inspect/history.js";
import { readOnly, readSnapshot, type Snapshot } from "../inspect/snapshot.js";
import { type Html, html } from "./html.js";
import { type Notice, page } from "./layout.js";
import { type ActionMode, messageLive, type Overview, overviewLive, taskLive } from "./pages.js";

export interface DashboardOptions {
  /** Reads go through `hf.pool` (any role that may read holdfast's tables: an observer
   *  suffices); actions call `hf.retry` / `hf.cancel` (holdfast.retry / holdfast.cancel). */
  hf: Holdfast;
  /** Default 127.0.0.1: only this machine can connect. */
  host?: string;
  /** Default 8080; 0 picks a free port. */
  port?: number;
  /** Offer retry and cancel (default false: read-only). */
  allowActions?: boolean;
  /** Token a browser or API client must present for actions (default: random, 24 bytes). */
  token?: string;
  logger: Logger;
  /** How often an open page redraws (default 2000 ms). */
  refreshMs?: number;
  /** The last hour's activity scans holdfast.attempts: reuse it for this long (default 10 s). */
  activityMaxAgeMs?: number;
}

export interface Dashboard {
  /** http://host:port/ */
  url: string;
  /** With actions: the URL that hands this browser the token (then drops it from the URL). */
  actionsUrl: string | null;
  /** With actions: the token (for `Authorization: Bearer` on /api POSTs). */
  token: string | null;
  close(): Promise<void>;
}

export const dashboardDefaults = {
  host: "127.0.0.1",
  port: 8080,
  refreshMs: 2_000,
  activityMaxAgeMs: 10_000,
} as const;

type Action = "retry" | "cancel";

/** Path parameters named in a route pattern: "/tasks/:id/:action" → "id" | "action". */
type Params<P extends string> = P extends `${string}:${infer Name}/${infer Rest}`
  ? Name | Params<`/${Rest}`>
  : P extends `${string}:${infer Name}`
    ? Name
    : never;

interface Request<P extends string> {
  req: http.IncomingMessage;
  params: Record<Params<P>, string>;
  url: URL;
  nonce: string;
}

interface Reply {
  status: number;
  type: "html" | "json" | "text";
  body: string;
  headers?: Record<string, string>;
}

/** A failure the operator can fix, with its status code (never a 500). */
class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly title: string,
    message: string,
  ) {
    super(message);
  }
}

interface Route {
  method: "GET" | "POST";
  match: (path: string) => Record<string, string> | null;
  /** JSON routes answer errors in JSON, the others with a page. */
  json: boolean;
  handle: (r: Request<string>) => Promise<Reply>;
}

function route<P extends string>(
  method: Route["method"],
  pattern: P,
  handle: (r: Request<P>) => Promise<Reply>,
): Route {
  const names: string[] = [];
  const re = new RegExp(
    `^${pattern.replace(/:([a-z]+)/g, (_, n: string) => {
      names.push(n);
      return "([^/]+)";
    })}$`,
  );
  return {
    method,
    json: pattern.startsWith("/api/"),
    match: (path) => {
      const m = re.exec(path);
      if (!m) return null;
      return Object.fromEntries(names.map((n, i) => [n, decodeURIComponent(m[i + 1] ?? "")]));
    },
    handle: handle as (r: Request<string>) => Promise<Reply>,
  };
}

const taskIdOf = (text: string): number => {
  const id = Number(text);
  if (!/^[1-9][0-9]{0,15}$/.test(text) || !Number.isSafeInteger(id))
    throw new HttpError(404, "No such task", `"${text}" is not a task id.`);
  return id;
};
const actionOf = (text: string): Action => {
  if (text === "retry" || text === "cancel") return text;
  throw new HttpError(404, "Not found", `Unknown action "${text}": use retry or cancel.`);
};

const doneText = {
  retried: (id) => `Task ${id} is pending again: a worker will start its next attempt.`,
  cancelling: (id) => `Cancel requested: task ${id}'s handler is being aborted.`,
  cancelled: (id) => `Task ${id} is cancelled: it will not start.`,
} satisfies Record<string, (id: number) => string>;
const isDone = (s: string | null): s is keyof typeof doneText =>
  s !== null && Object.hasOwn(doneText, s);

const loopback = new Set(["127.0.0.1", "localhost", "::1", "[::1]"]);
const cookieName = (port: number) => `holdfast_dashboard_${port}`;

/** Starts the dashboard; resolves once it listens. */
export async function startDashboard(options: DashboardOptions): Promise<Dashboard> {
  const { hf } = options;
  const log = options.logger.child({ component: "dashboard" });
  const host = options.host ?? dashboardDefaults.host;
  const refreshMs = options.refreshMs ?? dashboardDefaults.refreshMs;
  const activityMaxAgeMs = options.activityMaxAgeMs ?? dashboardDefaults.activityMaxAgeMs;
  const allowActions = options.allowActions === true;
  const token = allowActions ? (options.token ?? randomBytes(24).toString("base64url")) : null;
  let port = options.port ?? dashboardDefaults.port;
  let database = "";
  let activityCache: { at: number; activity: Activity } | undefined;

  const tokenMatches = (given: string | undefined): boolean => {
    if (token === null || given === undefined) return false;
    const a = Buffer.from(given);
    const b = Buffer.from(token);
    return a.length === b.length && timingSafeEqual(a, b);
  };
  const cookieToken = (req: http.IncomingMessage): string | undefined => {
    for (const part of (req.headers.cookie ?? "").split(";")) {
      const [k, ...v] = part.trim().split("=");
      if (k === cookieName(port)) return v.join("=");
    }
    return undefined;
  };
  const bearer = (req: http.IncomingMessage): string | undefined => {
    const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? "");
    return m?.[1];
  };
  const modeOf = (req: http.IncomingMessage): ActionMode => ({
    enabled: allowActions,
    authorized: allowActions && tokenMatches(cookieToken(req)),
  });

  /** Runs reads in one read-only transaction on a pooled client. */
  const read = async <T>(fn: (c: import("pg").PoolClient) => Promise<T>): Promise<T> => {
    let client: import("pg").PoolClient;
    try {
      client = await hf.pool.connect();
    } catch (err) {
      const e = unreachable(err);
      throw e instanceof HttpError ? e : new HttpError(503, "Cannot reach Postgres", String(err));
    }
    try {
      return await readOnly(client, () => fn(client));
    } catch (err) {
      throw unreachable(err);
    } finally {
      client.release();
    }
  };

  const overview = (): Promise<Overview> =>
    read(async (c) => {
      const snapshot = await readSnapshot(c);
      const waiting = await readWaiting(c, 10);
      const deadLetters = await readDeadLetters(c, 20);
      const now = Date.now();
      if (!activityCache || now - activityCache.at > activityMaxAgeMs)
        activityCache = {
          at: now,
          activity: await readActivity(
            c,
            snapshot.queue.map((q) => q.kind),
          ),
        };
      database = snapshot.database;
      return { snapshot, waiting, deadLetters, activity: activityCache.activity };
    });

  const task = (id: number): Promise<{ task: TaskDetail; snapshot: Snapshot }> =>
    read(async (c) => {
      const t = await readTask(c, id);
      if (!t) throw new HttpError(404, "No such task", `There is no task ${id}.`);
      const snapshot = await readSnapshot(c, { key: t.key });
      database = snapshot.database;
      return { task: t, snapshot };
    });

  const header = (mode: ActionMode): Html =>
    html`<span class="meta">${database}</span><span class="pill ${mode.authorized ? "warn" : "neutral"}" id="mode">${mode.authorized ? "actions enabled" : allowActions ? "read-only (actions need the token)" : "read-only"}</span>`;

  const htmlReply = (
    r: Request<string>,
    title: string,
    live: Html,
    refreshUrl: string,
    status = 200,
    notice?: Notice,
  ): Reply => {
    const mode = modeOf(r.req);
    if (r.req.headers["x-holdfast-fragment"] === "1")
      return { status, type: "html", body: live.value };
    return {
      status,
      type: "html",
      body: page({
        title,
        header: header(mode),
        live,
        refreshUrl,
        refreshMs,
        notice,
        nonce: r.nonce,
      }).value,
    };
  };
  const json = (status: number, value: unknown): Reply => ({
    status,
    type: "json",
    body: `${JSON.stringify(value, null, 2)}\n`,
  });

  /** Checks a stale page's action against the task as it is now, then calls holdfast. */
  const act = async (
    id: number,
    action: Action,
    seen: string | undefined,
    remote: string | undefined,
  ): Promise<{ status: number; message: string; done?: keyof typeof doneText }> => {
    const current = (await task(id)).task;
    const now = `${current.state}:${current.attempt}`;
    const done = (status: number, message: string, result: string) => {
      log.info(
        { event: "dashboard_action", action, task: id, seen: seen ?? null, now, result, remote },
        `dashboard: ${action} task ${id}: ${result}`,
      );
      return { status, message };
    };
    if (seen !== undefined && seen !== now) {
      const [state, attempt] = seen.split(":");
      return done(
        409,
        `Nothing done: task ${id} moved on since this page was drawn (it was ${state} after attempt ${attempt}, it is now ${current.state} after attempt ${current.attempt}). Check it again below.`,
        "stale",
      );
    }
    let ok: boolean;
    try {
      ok = action === "retry" ? await hf.retry(id) : await hf.cancel(id);
    } catch (err) {
      const e = translateError(err);
      if (e instanceof TaskNotFoundError)
        return done(404, `Nothing done: there is no task ${id}.`, "not_found");
      if (e instanceof HoldfastError && e.code === "42501")
        return done(
          403,
          `Nothing done: the dashboard's database role may not call holdfast.${action} (grant it holdfast_producer).`,
          "permission_denied",
        );
      throw unreachable(err);
    }
    if (!ok)
      return done(
        409,
        action === "retry"
          ? `Nothing done: task ${id} is ${current.state}; only a dead-lettered or cancelled task can be retried (or its dedupe key already has a pending task).`
          : `Nothing done: task ${id} had already ended (${current.state}).`,
        "refused",
      );
    const key: keyof typeof doneText =
      action === "retry" ? "retried" : current.state === "running" ? "cancelling" : "cancelled";
    return { ...done(200, doneText[key](id), "done"), done: key };
  };

  const requireToken = (ok: boolean) => {
    if (!allowActions)
      throw new HttpError(
        403,
        "Actions are off",
        "This dashboard is read-only: start it with --allow-actions to retry or cancel tasks.",
      );
    if (!ok)
      throw new HttpError(
        403,
        "Token needed",
        "Open the link with the token that `holdfast dashboard --allow-actions` printed at start, then try again.",
      );
  };

  const routes: Route[] = [
    route("GET", "/", async (r) => {
      const given = r.url.searchParams.get("token");
      if (given !== null) {
        if (!tokenMatches(given))
          throw new HttpError(403, "Wrong token", "That token does not match this dashboard's.");
        // The token moves to a cookie, out of the address bar and the history.
        return {
          status: 303,
          type: "text",
          body: "actions enabled\n",
          headers: {
            location: "/",
            "set-cookie": `${cookieName(port)}=${given}; HttpOnly; SameSite=Strict; Path=/`,
          },
        };
      }
      const o = await overview();
      return htmlReply(r, `holdfast · ${database}`, overviewLive(o, modeOf(r.req)), "/");
    }),
    route("GET", "/tasks/:id", async (r) => {
      const id = taskIdOf(r.params.id);
      const { task: t, snapshot } = await task(id);
      // A fixed text per outcome: a link cannot make this page say something else.
      const code = r.url.searchParams.get("done");
      return htmlReply(
        r,
        `task ${id} · holdfast`,
        taskLive(t, snapshot, modeOf(r.req)),
        `/tasks/${id}`,
        200,
        isDone(code) ? { tone: "ok", text: doneText[code](id) } : undefined,
      );
    }),
    route("POST", "/tasks/:id/:action", async (r) => {
      const id = taskIdOf(r.params.id);
      const action = actionOf(r.params.action);
      requireToken(modeOf(r.req).authorized);
      const form = new URLSearchParams(await body(r.req));
      const result = await act(
        id,
        action,
        form.get("seen") ?? undefined,
        r.req.socket.remoteAddress,
      );
      if (result.status === 200)
        return {
          status: 303,
          type: "text",
          body: `${result.message}\n`,
          headers: { location: `/tasks/${id}?done=${result.done}` },
        };
      const current = await task(id).catch(() => undefined);
      const live = current
        ? taskLive(current.task, current.snapshot, modeOf(r.req))
        : messageLive("No such task", result.message);
      return htmlReply(r, `task ${id} · holdfast`, live, `/tasks/${id}`, result.status, {
        tone: "error",
        text: result.message,
      });
    }),
    route("GET", "/api/overview", async () => json(200, await overview())),
    route("GET", "/api/tasks/:id", async (r) => json(200, await task(taskIdOf(r.params.id)))),
    route("POST", "/api/tasks/:id/:action", async (r) => {
      const id = taskIdOf(r.params.id);
      const action = actionOf(r.params.action);
      requireToken(tokenMatches(bearer(r.req)) || modeOf(r.req).authorized);
      const text = await body(r.req);
      let seen: string | undefined;
      if (text.trim() !== "") {
        let parsed: unknown;
        try {
          parsed = JSON.parse(text);
        } catch {
          throw new HttpError(400, "Bad request", "The body is not JSON.");
        }
        const s = (parsed as { seen?: unknown } | null)?.seen;
        if (s !== undefined && typeof s !== "string")
          throw new HttpError(400, "Bad request", '"seen" must be a string like "failed:3".');
        seen = s;
      }
      const result = await act(id, action, seen, r.req.socket.remoteAddress);
      return json(result.status, {
        id,
        action,
        ok: result.status === 200,
        message: result.message,
      });
    }),
  ];

  const handle = async (req: http.IncomingMessage, nonce: string): Promise<Reply> => {
    const url = new URL(req.url ?? "/", "http://dashboard.invalid");
    // Bound to loopback, answer only names of loopback: a page of another site that
    // re-points its own host name at 127.0.0.1 (DNS rebinding) cannot read this one.
    const hostName = (req.headers.host ?? "").replace(/:\d+$/, "");
    if (loopback.has(host) && !loopback.has(hostName))
      throw new HttpError(421, "Wrong host", `This dashboard answers on ${host} only.`);
    const matched = routes
      .map((r) => ({ r, params: r.match(url.pathname) }))
      .filter((m) => m.params !== null);
    const hit = matched.find((m) => m.r.method === req.method);
    if (!hit) {
      if (matched.length > 0)
        throw new HttpError(405, "Method not allowed", `${req.method} is not allowed here.`);
      throw new HttpError(404, "Not found", `Nothing at ${url.pathname}.`);
    }
    if (req.method === "POST") {
      const origin = req.headers.origin;
      if (origin !== undefined && origin !== `http://${req.headers.host}`)
        throw new HttpError(
          403,
          "Cross-site request",
          "Actions are accepted from this dashboard's own pages only.",
        );
    }
    return await hit.r.handle({ req, params: hit.params ?? {}, url, nonce });
  };

  const server = http.createServer((req, res) => {
    const nonce = randomBytes(16).toString("base64");
    const isJson = (req.url ?? "").startsWith("/api/");
    handle(req, nonce)
      .catch((err: unknown): Reply => {
        if (!(err instanceof HttpError)) {
          log.error({ event: "dashboard_error", err, url: req.url }, "dashboard: request failed");
          err = new HttpError(500, "Internal error", "The dashboard failed; see its log.");
        }
        const e = err as HttpError;
        if (isJson) return json(e.status, { error: e.title, message: e.message });
        const fragment = req.headers["x-holdfast-fragment"] === "1";
        const live = messageLive(e.title, e.message);
        return {
          status: e.status,
          type: "html",
          body: fragment
            ? live.value
            : page({
                title: `${e.title} · holdfast`,
                header: header(modeOf(req)),
                live,
                refreshUrl: req.url ?? "/",
                refreshMs: refreshMs * 5,
                nonce,
              }).value,
        };
      })
      .then((reply) => {
        const type = {
          html: "text/html; charset=utf-8",
          json: "application/json; charset=utf-8",
          text: "text/plain; charset=utf-8",
        }[reply.type];
        res.writeHead(reply.status, {
          "content-type": type,
          "cache-control": "no-store",
          "x-content-type-options": "nosniff",
          // same-origin, not no-referrer: with no-referrer a form POST carries "Origin: null".
          "referrer-policy": "same-origin",
          "x-frame-options": "DENY",
          "content-security-policy": `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'`,
          ...reply.headers,
        });
        res.end(reply.body);
      });
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  port = (server.address() as AddressInfo).port;
  const base = `http://${host.includes(":") ? `[${host}]` : host}:${port}/`;
  log.info(
    { event: "dashboard_listening", url: base, actions: allowActions },
    `dashboard: listening on ${base}${allowActions ? " (actions enabled)" : " (read-only)"}`,
  );
  return {
    url: base,
    actionsUrl: token === null ? null : `${base}?token=${token}`,
    token,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** Reads a small request body (an action's form or JSON); larger bodies are refused. */
async function body(req: http.IncomingMessage, limit = 4096): Promise<string> {
  let text = "";
  for await (const chunk of req) {
    text += String(chunk);
    if (text.length > limit)
      throw new HttpError(413, "Too large", "The request body is too large.");
  }
  return text;
}

/** A database failure as an operator sees it: 503 with what to do (by SQLSTATE). */
function unreachable(err: unknown): unknown {
  if (err instanceof HttpError) return err;
  const code = (err as { code?: unknown }).code;
  const message = err instanceof Error ? err.message : String(err);
  if (code === "3F000" || code === "42P01")
    return new HttpError(
      503,
      "No holdfast schema",
      "Run `holdfast migrate` on this database first.",
    );
  if (code === "42501")
    return new HttpError(
      503,
      "Permission denied",
      `The dashboard's role may not read holdfast's tables (${message}): grant it holdfast_observer.`,
    );
  // Connection classes and socket errors (ECONNREFUSED...): the server is down or far away.
  if (typeof code === "string" && /^(08|57P|53|E[A-Z]+$)/.test(code))
    return new HttpError(503, "Cannot reach Postgres", `${code}: ${message}`);
  return err;
}
