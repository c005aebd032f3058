// A small HTTP layer on node:http: typed routes, replies as values, a failure the operator
// can fix as an HttpError with its status, and the same security headers on every response.
import { randomBytes } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import type { Logger } from "pino";
import { ConfigError } from "../errors.js";

/** Path parameters named in a route pattern: "/tasks/:id/:action" → "id" | "action". */
export type Params<P extends string> = P extends `${string}:${infer Name}/${infer Rest}`
  ? Name | Params<`/${Rest}`>
  : P extends `${string}:${infer Name}`
    ? Name
    : never;

export interface Request<P extends string = string> {
  req: http.IncomingMessage;
  params: Record<Params<P>, string>;
  url: URL;
  /** This response's CSP nonce: the one inline script must carry it. */
  nonce: string;
}

export interface Reply {
  status: number;
  type: "html" | "json" | "text";
  body: string;
  headers?: Record<string, string>;
}

/** A failure the operator can fix (bad id, no token, database down), with its status code. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly title: string,
    message: string,
  ) {
    super(message);
  }
}

export interface Route {
  method: "GET" | "POST";
  match: (path: string) => Record<string, string> | null;
  handle: (r: Request) => Promise<Reply>;
}

export function route<P extends string>(
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
    match: (path) => {
      const m = re.exec(path);
      if (!m) return null;
      try {
        return Object.fromEntries(names.map((n, i) => [n, decodeURIComponent(m[i + 1] ?? "")]));
      } catch {
        return null; // malformed %-escape: no such page
      }
    },
    handle: handle as (r: Request) => Promise<Reply>,
  };
}

export const json = (status: number, value: unknown): Reply => ({
  status,
  type: "json",
  body: `${JSON.stringify(value, null, 2)}\n`,
});

/** Reads a small request body (an action's form or JSON); larger bodies are refused. */
export async function readBody(req: http.IncomingMessage, limit = 4096): Promise<string> {
  let text = "";
  for await (const chunk of req) {
    text += String(chunk);
    if (text.length > limit)
      throw new HttpError(413, "Too large", "The request body is too large.");
  }
  return text;
}

const loopback = new Set(["127.0.0.1", "localhost", "::1", "[::1]"]);
const contentTypes = {
  html: "text/html; charset=utf-8",
  json: "application/json; charset=utf-8",
  text: "text/plain; charset=utf-8",
} as const;

export interface ServeOptions {
  host: string;
  port: number;
  routes: Route[];
  /** The reply for an HttpError (a page or JSON); anything else is logged and becomes a 500. */
  failure: (e: HttpError, req: http.IncomingMessage, nonce: string) => Reply;
  log: Logger;
}

/** Listens; resolves with the port and a close function once it does. */
export async function serve(
  opts: ServeOptions,
): Promise<{ port: number; close: () => Promise<void> }> {
  const { host, routes, log } = opts;
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
    handle(req, nonce)
      .catch((err: unknown): Reply => {
        if (err instanceof HttpError) return opts.failure(err, req, nonce);
        log.error({ event: "dashboard_error", err, url: req.url }, "dashboard: request failed");
        return opts.failure(
          new HttpError(500, "Internal error", "The dashboard failed; see its log."),
          req,
          nonce,
        );
      })
      .then((reply) => {
        res.writeHead(reply.status, {
          "content-type": contentTypes[reply.type],
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
    server.once("error", (err: NodeJS.ErrnoException) =>
      reject(
        err.code === "EADDRINUSE" || err.code === "EACCES" || err.code === "EADDRNOTAVAIL"
          ? new ConfigError(
              `holdfast: cannot listen on ${host}:${opts.port} (${err.code}): pick another --port or --host`,
              { cause: err },
            )
          : err,
      ),
    );
    server.listen(opts.port, host, () => {
      server.removeAllListeners("error");
      server.on("error", (err) =>
        log.error({ event: "dashboard_error", err }, "dashboard: server error"),
      );
      resolve();
    });
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
