// The dashboard: its routes over the inspector's reads, read-only unless actions are enabled.
// HTTP on node:http (http.ts): five routes did not need a framework.
import { randomBytes } from "node:crypto";
import type pg from "pg";
import type { Logger } from "pino";
import type { Holdfast } from "../holdfast.js";
import {
  type Activity,
  readActivity,
  readDeadLetters,
  readTask,
  readWaiting,
  type TaskDetail,
} from "../inspect/history.js";
import { readOnly, readSnapshot, type Snapshot, type Versions } from "../inspect/snapshot.js";
import { ActionToken, actionOf, doneText, isDone, runAction } from "./actions.js";
import { type Html, html } from "./html.js";
import { HttpError, json, type Reply, type Request, readBody, route, serve } from "./http.js";
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
  /** The last hour's activity (its attempts, read by time): reuse it for this long (default 10 s). */
  activityMaxAgeMs?: number;
}

export interface Dashboard {
  /** http://host:port/ */
  url: string;
  /** With actions: the URL that hands a browser the token (then drops it from the URL). */
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

const taskIdOf = (text: string): number => {
  const id = Number(text);
  if (!/^[1-9][0-9]{0,15}$/.test(text) || !Number.isSafeInteger(id))
    throw new HttpError(404, "No such task", `"${text}" is not a task id.`);
  return id;
};

/** Starts the dashboard; resolves once it listens. */
export async function startDashboard(options: DashboardOptions): Promise<Dashboard> {
  const { hf } = options;
  const log = options.logger.child({ component: "dashboard" });
  const host = options.host ?? dashboardDefaults.host;
  const refreshMs = options.refreshMs ?? dashboardDefaults.refreshMs;
  const activityMaxAgeMs = options.activityMaxAgeMs ?? dashboardDefaults.activityMaxAgeMs;
  let port = options.port ?? dashboardDefaults.port;
  const token = new ActionToken(
    options.allowActions === true ? (options.token ?? randomBytes(24).toString("base64url")) : null,
    () => port,
  );
  let database = "";
  /** Shown in the header (the latest overview read them). */
  let versions: Versions | undefined;
  let activityCache: { at: number; activity: Activity } | undefined;

  /** Runs reads in one read-only transaction on a pooled client. */
  const read = async <T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> => {
    let client: pg.PoolClient;
    try {
      client = await hf.pool.connect();
    } catch (err) {
      throw unreachable(err, true);
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
      if (!activityCache || now - activityCache.at > activityMaxAgeMs) {
        const kinds = snapshot.queue.map((q) => q.kind);
        activityCache = { at: now, activity: await readActivity(c, kinds) };
      }
      database = snapshot.database;
      versions = snapshot.versions;
      return { snapshot, waiting, deadLetters, activity: activityCache.activity };
    });

  const task = (id: number): Promise<{ task: TaskDetail; snapshot: Snapshot }> =>
    read(async (c) => {
      const t = await readTask(c, id);
      if (!t) throw new HttpError(404, "No such task", `There is no task ${id}.`);
      // The inspector's view of the task's key: its holder (held for, pid) or orphan.
      const snapshot = await readSnapshot(c, { key: t.key });
      database = snapshot.database;
      return { task: t, snapshot };
    });

  const header = (mode: ActionMode): Html =>
    html`<span class="meta">${database}</span><span class="meta" id="versions">${versions ? `holdfast ${versions.package}, schema ${versions.schema ?? "unknown"}${versions.schema !== null && versions.schema !== versions.releaseSchema ? ` (this package: ${versions.releaseSchema})` : ""}` : ""}</span><span class="pill ${mode.authorized ? "warn" : "neutral"}" id="mode">${mode.authorized ? "actions enabled" : mode.enabled ? "read-only (actions need the token)" : "read-only"}</span>`;

  /** The whole page, or only its live part when the page's script asks for a redraw. */
  const htmlReply = (
    r: Pick<Request, "req" | "nonce">,
    title: string,
    live: Html,
    refreshUrl: string | null,
    status = 200,
    notice?: Notice,
  ): Reply => {
    if (r.req.headers["x-holdfast-fragment"] === "1")
      return { status, type: "html", body: live.value };
    const shell = { title, live, refreshUrl, refreshMs, notice, nonce: r.nonce };
    return {
      status,
      type: "html",
      body: page({ ...shell, header: header(token.mode(r.req)) }).value,
    };
  };

  /** Refused actions are logged too: someone tried. */
  const requireToken = (r: Request<"/:id/:action">, bearerToo: boolean) => {
    try {
      token.require(r.req, bearerToo);
    } catch (err) {
      log.warn(
        {
          event: "dashboard_action_denied",
          action: r.params.action,
          task: r.params.id,
          remote: r.req.socket.remoteAddress,
        },
        "dashboard: action without a valid token refused",
      );
      throw err;
    }
  };

  const act = async (r: Request<"/:id/:action">, seen: string | undefined) => {
    const id = taskIdOf(r.params.id);
    const action = actionOf(r.params.action);
    const current = (await task(id)).task;
    const remote = r.req.socket.remoteAddress;
    return await runAction(hf, log, current, action, seen, remote).catch((err: unknown) => {
      throw unreachable(err);
    });
  };

  const routes = [
    route("GET", "/", async (r) => {
      const given = r.url.searchParams.get("token");
      if (given !== null) {
        if (!token.matches(given))
          throw new HttpError(403, "Wrong token", "That token does not match this dashboard's.");
        // The token moves to a cookie, out of the address bar and the history.
        return {
          status: 303,
          type: "text",
          body: "actions enabled\n",
          headers: {
            location: "/",
            "set-cookie": `${token.cookieName}=${given}; HttpOnly; SameSite=Strict; Path=/`,
          },
        };
      }
      const o = await overview();
      return htmlReply(r, `holdfast · ${database}`, overviewLive(o, token.mode(r.req)), "/");
    }),
    route("GET", "/tasks/:id", async (r) => {
      const id = taskIdOf(r.params.id);
      const { task: t, snapshot } = await task(id);
      const done = r.url.searchParams.get("done");
      const notice: Notice | undefined = isDone(done)
        ? { tone: "ok", text: doneText[done](id) }
        : undefined;
      const live = taskLive(t, snapshot, token.mode(r.req));
      return htmlReply(r, `task ${id} · holdfast`, live, `/tasks/${id}`, 200, notice);
    }),
    route("POST", "/tasks/:id/:action", async (r) => {
      requireToken(r, false);
      const form = new URLSearchParams(await readBody(r.req));
      const result = await act(r, form.get("seen") ?? undefined);
      const id = taskIdOf(r.params.id);
      if (result.done)
        return {
          status: 303,
          type: "text",
          body: `${result.message}\n`,
          headers: { location: `/tasks/${id}?done=${result.done}` },
        };
      // Refused: the task's page as it is now, with the reason on top.
      const now = await task(id).catch(() => undefined);
      const live = now
        ? taskLive(now.task, now.snapshot, token.mode(r.req))
        : messageLive("No such task", result.message);
      return htmlReply(r, `task ${id} · holdfast`, live, `/tasks/${id}`, result.status, {
        tone: "error",
        text: result.message,
      });
    }),
    route("GET", "/api/overview", async () => json(200, await overview())),
    route("GET", "/api/tasks/:id", async (r) => json(200, await task(taskIdOf(r.params.id)))),
    route("POST", "/api/tasks/:id/:action", async (r) => {
      requireToken(r, true);
      const text = await readBody(r.req);
      let seen: unknown;
      if (text.trim() !== "") {
        try {
          seen = (JSON.parse(text) as { seen?: unknown } | null)?.seen;
        } catch {
          throw new HttpError(400, "Bad request", "The body is not JSON.");
        }
        if (seen !== undefined && typeof seen !== "string")
          throw new HttpError(400, "Bad request", '"seen" must be a string like "failed:3".');
      }
      const result = await act(r, seen as string | undefined);
      return json(result.status, {
        id: taskIdOf(r.params.id),
        action: r.params.action,
        ok: result.done !== undefined,
        message: result.message,
      });
    }),
  ];

  const server = await serve({
    host,
    port,
    routes,
    log,
    failure: (e, req, nonce) => {
      if ((req.url ?? "").startsWith("/api/"))
        return json(e.status, { error: e.title, message: e.message });
      // Only a 503 redraws (the same address), to show the page once Postgres is back.
      const again = e.status === 503 ? (req.url ?? "/") : null;
      const live = messageLive(e.title, e.message);
      return htmlReply({ req, nonce }, `${e.title} · holdfast`, live, again, e.status);
    },
  });
  port = server.port;
  const base = `http://${host.includes(":") ? `[${host}]` : host}:${port}/`;
  log.info(
    { event: "dashboard_listening", url: base, actions: token.token !== null },
    `dashboard: listening on ${base}${token.token !== null ? " (actions enabled)" : " (read-only)"}`,
  );
  return {
    url: base,
    actionsUrl: token.token === null ? null : `${base}?token=${token.token}`,
    token: token.token,
    close: server.close,
  };
}

/** A database failure as an operator sees it: 503 with what to do (by SQLSTATE). */
function unreachable(err: unknown, connecting = false): unknown {
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
  // Connection classes, socket errors (ECONNREFUSED...), any failure to connect.
  if (connecting || (typeof code === "string" && /^(08|57P|53|E[A-Z]+$)/.test(code)))
    return new HttpError(503, "Cannot reach Postgres", message);
  return err;
}
