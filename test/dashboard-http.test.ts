// The dashboard at the HTTP level: status codes, JSON, escaping, tokens, stale actions, roles.
import { spawn } from "node:child_process";
import http from "node:http";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { type Dashboard, startDashboard } from "../src/dashboard/server.js";
import { Holdfast } from "../src/index.js";
import { bin, repoRoot } from "./support/cli.js";
import { buildScene, type Scene, scene } from "./support/dashboard-scene.js";
import { silent, useHoldfast } from "./support/db.js";
import { captureLogger } from "./support/log-capture.js";
import { freePort } from "./support/postgres.js";

interface Res {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One request, redirects not followed, any header allowed (Host included). */
function request(
  url: string,
  opts: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<Res> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      { method: opts.method ?? "GET", headers: opts.headers },
      (res) => {
        let body = "";
        res.on("data", (d) => {
          body += String(d);
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      },
    );
    req.on("error", reject);
    req.end(opts.body);
  });
}
const json = (r: Res) => JSON.parse(r.body);

const t = useHoldfast();
const logs = captureLogger();
let s: Scene;
let readOnly: Dashboard;
let actions: Dashboard;
const token = "test-token-0123456789abcdef";
const observer = `hf_observer_${Math.random().toString(36).slice(2, 8)}`;

beforeAll(async () => {
  s = await buildScene(t.hf, t.db.url);
  readOnly = await startDashboard({ hf: t.hf, port: 0, logger: silent });
  actions = await startDashboard({
    hf: t.hf,
    port: 0,
    allowActions: true,
    token,
    logger: logs.logger,
  });
});

afterAll(async () => {
  await readOnly?.close();
  await actions?.close();
  await s?.holder.end();
  // Roles are server-wide; this one owns nothing and has no grant of its own.
  const admin = new pg.Client({ connectionString: inject("adminUrl") });
  await admin.connect();
  await admin.query(`drop role if exists ${observer}`);
  await admin.end();
});

describe("reading", () => {
  it("serves the overview as JSON: holders, orphans, waiting tasks, dead letters, activity", async () => {
    const r = await request(`${readOnly.url}api/overview`);
    expect(r.status).toBe(200);
    expect(r.headers["content-type"]).toBe("application/json; charset=utf-8");
    const o = json(r);
    expect(o.snapshot.holders).toEqual([
      expect.objectContaining({ key: scene.running, taskId: s.runningId, worker: scene.worker }),
    ]);
    expect(o.snapshot.orphans.map((x: { taskId: number }) => x.taskId)).toEqual([s.orphanId]);
    expect(o.waiting).toContainEqual(expect.objectContaining({ id: s.followUpId, keyBusy: true }));
    // Its key's earlier task waits out a retry's backoff and keeps its place.
    expect(o.waiting).toContainEqual(
      expect.objectContaining({ id: s.behindId, keyBusy: false, behind: s.backoffId }),
    );
    expect(o.deadLetters).toContainEqual(
      expect.objectContaining({
        id: s.deadId,
        lastError: expect.objectContaining({ message: scene.deadError }),
      }),
    );
    const rep = o.activity.kinds.find((k: { kind: string }) => k.kind === "representation");
    expect(rep.minutes).toHaveLength(60);
    // Every attempt buildScene ended over the hour, in its minute.
    const sum = (f: string) =>
      rep.minutes.reduce((a: number, m: Record<string, number>) => a + (m[f] ?? 0), 0);
    const { succeeded, failed } = s.representation;
    expect(failed).toBeGreaterThan(1);
    expect(sum("failed")).toBe(failed);
    expect(sum("succeeded")).toBe(succeeded);
    expect(sum("started")).toBe(succeeded + failed);
    expect(rep.runs).toBe(succeeded + failed);
    expect(rep.p50Ms).toBeGreaterThan(400);
    expect(rep.p95Ms).toBeGreaterThanOrEqual(rep.p50Ms);
  });

  it("renders keys, errors and payloads as text: a key like <script> runs nothing", async () => {
    const r = await request(readOnly.url);
    expect(r.status).toBe(200);
    expect(r.headers["content-type"]).toBe("text/html; charset=utf-8");
    expect(r.body).toContain("&lt;script&gt;alert(&quot;key&quot;)&lt;/script&gt;");
    expect(r.body).toContain("&lt;img src=x onerror=alert(1)&gt; broke");
    expect(r.body).not.toContain(scene.hostileKey);
    expect(r.body).not.toContain("<img");
    // The one script is the page's own, allowed by this response's nonce only.
    expect(r.body.match(/<script/g)).toHaveLength(1);
    const nonce = /<script nonce="([^"]+)">/.exec(r.body)?.[1];
    expect(r.headers["content-security-policy"]).toContain(`script-src 'nonce-${nonce}'`);
    const task = await request(`${readOnly.url}tasks/${s.hostileId}`);
    expect(task.status).toBe(200);
    expect(task.body).toContain(
      "&lt;/pre&gt;&lt;script&gt;alert(&#39;payload&#39;)&lt;/script&gt;",
    );
    expect(task.body.match(/<script/g)).toHaveLength(1);
  });

  it("shows a task's payload, attempts with their fences and errors", async () => {
    const r = await request(`${readOnly.url}api/tasks/${s.deadId}`);
    expect(r.status).toBe(200);
    const { task } = json(r);
    expect(task).toMatchObject({ id: s.deadId, state: "failed", attempt: 2, key: scene.dead });
    expect(task.payload).toEqual({ ws: "ws", observer: "carol", observed: "carol" });
    expect(task.attempts.map((a: { outcome: string }) => a.outcome)).toEqual(["failed", "failed"]);
    expect(task.attempts[0].error.message).toBe(scene.deadError);
    expect(task.attempts[1].fence).toBeGreaterThan(task.attempts[0].fence);
    const page = await request(`${readOnly.url}tasks/${s.deadId}`);
    expect(page.body).toContain(scene.deadError);
    expect(page.body).toContain(String(task.attempts[1].fence));
  });

  it("redraws only the live part when the page's script asks", async () => {
    const r = await request(readOnly.url, { headers: { "x-holdfast-fragment": "1" } });
    expect(r.status).toBe(200);
    expect(r.body).not.toContain("<html");
    expect(r.body).toContain(scene.running);
  });
});

describe("bad input gets a clear 4xx, never a 500", () => {
  it.each([
    ["/tasks/abc", 404, "&quot;abc&quot; is not a task id"],
    ["/tasks/999999", 404, "There is no task 999999"],
    ["/tasks/99999999999999999999", 404, "is not a task id"],
    ["/no/such/page", 404, "Nothing at /no/such/page"],
  ])("GET %s → %i", async (path, status, text) => {
    const r = await request(`${readOnly.url}${path.slice(1)}`);
    expect(r.status).toBe(status);
    expect(r.headers["content-type"]).toBe("text/html; charset=utf-8");
    expect(r.body).toContain(text);
    // It stays what it is: no script redraws it into something else.
    expect(r.body).not.toContain("<script");
  });

  it("answers JSON routes in JSON", async () => {
    const r = await request(`${readOnly.url}api/tasks/999999`);
    expect(r.status).toBe(404);
    expect(json(r)).toEqual({ error: "No such task", message: "There is no task 999999." });
  });

  it("refuses a method a route does not take, and actions on a read-only dashboard", async () => {
    expect((await request(readOnly.url, { method: "DELETE" })).status).toBe(405);
    const r = await request(`${readOnly.url}api/tasks/${s.deadId}/retry`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}` },
    });
    expect(r.status).toBe(403);
    expect(json(r).message).toMatch(/read-only: start it with --allow-actions/);
  });

  it("answers only loopback host names while bound to loopback (no DNS rebinding)", async () => {
    const r = await request(readOnly.url, { headers: { host: "attacker.example:8080" } });
    expect(r.status).toBe(421);
    expect((await request(readOnly.url, { headers: { host: "localhost" } })).status).toBe(200);
  });

  it("says which port is taken instead of failing obscurely", async () => {
    const port = Number(new URL(readOnly.url).port);
    await expect(startDashboard({ hf: t.hf, port, logger: silent })).rejects.toThrow(
      `cannot listen on 127.0.0.1:${port} (EADDRINUSE): pick another --port or --host`,
    );
  });

  it("says Postgres is unreachable with a 503 when it is", async () => {
    const port = await freePort();
    const hf = new Holdfast({
      connectionString: `postgres://nobody:x@127.0.0.1:${port}/none`,
      logger: silent,
    });
    const d = await startDashboard({ hf, port: 0, logger: silent });
    try {
      const r = await request(d.url);
      expect(r.status).toBe(503);
      expect(r.body).toContain("Cannot reach Postgres");
      // It redraws itself, to show the page once Postgres is back.
      expect(r.body).toContain('data-refresh="/"');
      expect(r.body).toContain("<script nonce=");
      expect((await request(`${d.url}api/overview`)).status).toBe(503);
    } finally {
      await d.close();
      await hf.close();
    }
  });
});

describe("actions", () => {
  const post = (
    path: string,
    opts: { token?: string; body?: unknown; headers?: Record<string, string> } = {},
  ) =>
    request(`${actions.url}${path}`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
        ...opts.headers,
      },
      body: typeof opts.body === "string" ? opts.body : JSON.stringify(opts.body ?? {}),
    });
  const stateOf = async (id: number) =>
    (await t.db.pool.query("select state, attempt from holdfast.tasks where id = $1", [id]))
      .rows[0];

  it("need the token", async () => {
    expect((await post(`api/tasks/${s.deadId}/retry`)).status).toBe(403);
    expect(
      (await post(`api/tasks/${s.deadId}/retry`, { token: "wrong-token-0123456789abc" })).status,
    ).toBe(403);
    expect((await request(`${actions.url}?token=wrong`)).status).toBe(403);
    // Pages show no button to a browser without the token.
    expect((await request(actions.url)).body).not.toContain("data-action=");
    expect((await stateOf(s.deadId)).state).toBe("failed");
    expect(logs.lines).toContainEqual(
      expect.objectContaining({ event: "dashboard_action_denied", task: String(s.deadId) }),
    );
  });

  it("refuse a stale page's action (the task moved on) and do nothing", async () => {
    const r = await post(`api/tasks/${s.deadId}/retry`, { token, body: { seen: "failed:1" } });
    expect(r.status).toBe(409);
    expect(json(r).message).toMatch(/moved on since this page was drawn/);
    expect(await stateOf(s.deadId)).toEqual({ state: "failed", attempt: 2 });
  });

  it("retry a dead letter through holdfast.retry, and say so when there is nothing to retry", async () => {
    const r = await post(`api/tasks/${s.deadId}/retry`, { token, body: { seen: "failed:2" } });
    expect(r.status).toBe(200);
    expect(json(r)).toMatchObject({ id: s.deadId, action: "retry", ok: true });
    expect((await stateOf(s.deadId)).state).toBe("pending");
    const again = await post(`api/tasks/${s.deadId}/retry`, { token });
    expect(again.status).toBe(409);
    expect(json(again).message).toMatch(/is pending; only a dead-lettered or cancelled task/);
    expect((await post("api/tasks/999999/cancel", { token })).status).toBe(404);
    expect((await post(`api/tasks/${s.deadId}/explode`, { token })).status).toBe(404);
    expect((await post(`api/tasks/${s.deadId}/retry`, { token, body: "[" })).status).toBe(400);
    expect(logs.lines).toContainEqual(
      expect.objectContaining({
        event: "dashboard_action",
        action: "retry",
        task: s.deadId,
        result: "done",
      }),
    );
    expect(logs.lines).toContainEqual(
      expect.objectContaining({ event: "dashboard_action", task: s.deadId, result: "stale" }),
    );
  });

  it("work from the page's form once the browser opened the token link; other origins are refused", async () => {
    const link = await request(actions.actionsUrl ?? "");
    expect(link.status).toBe(303);
    expect(link.headers.location).toBe("/");
    const cookie = String(link.headers["set-cookie"]).split(";")[0] ?? "";
    expect(String(link.headers["set-cookie"])).toMatch(/HttpOnly; SameSite=Strict/);
    const page = await request(actions.url, { headers: { cookie } });
    expect(page.body).toContain(`data-action="cancel"`.replace("cancel", "retry"));

    const form = (origin: string) =>
      request(`${actions.url}tasks/${s.followUpId}/cancel`, {
        method: "POST",
        headers: {
          cookie,
          origin,
          "content-type": "application/x-www-form-urlencoded",
        },
        body: "seen=pending%3A0",
      });
    const evil = await form("https://attacker.example");
    expect(evil.status).toBe(403);
    expect((await stateOf(s.followUpId)).state).toBe("pending");
    const ok = await form(actions.url.replace(/\/$/, ""));
    expect(ok.status).toBe(303);
    expect(ok.headers.location).toBe(`/tasks/${s.followUpId}?done=cancelled`);
    expect((await stateOf(s.followUpId)).state).toBe("cancelled");
    const shown = await request(`${actions.url}tasks/${s.followUpId}?done=cancelled`, {
      headers: { cookie },
    });
    expect(shown.body).toContain(`Task ${s.followUpId} is cancelled`);
    // A stale form (the page still shows it pending) gets the task's page with the reason.
    const stale = await form(actions.url.replace(/\/$/, ""));
    expect(stale.status).toBe(409);
    expect(stale.body).toContain("moved on since this page was drawn");
  });
});

describe("roles and the command line", () => {
  it("reads with an observer role; an action it may not take is a 403 that says which role", async () => {
    await t.db.pool.query(
      `create role ${observer} login password 'observer' in role holdfast_observer`,
    );
    const u = new URL(t.db.url);
    u.username = observer;
    u.password = "observer";
    const hf = new Holdfast({ connectionString: u.toString(), logger: silent });
    const d = await startDashboard({ hf, port: 0, allowActions: true, token, logger: silent });
    try {
      const r = await request(`${d.url}api/overview`);
      expect(r.status).toBe(200);
      expect(json(r).snapshot.holders[0]).toMatchObject({ key: scene.running, clientAddr: null });
      expect((await request(`${d.url}tasks/${s.runningId}`)).status).toBe(200);
      const denied = await request(`${d.url}api/tasks/${s.hostileId}/retry`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}` },
      });
      expect(denied.status).toBe(403);
      expect(json(denied).message).toMatch(/grant it holdfast_producer/);
    } finally {
      await d.close();
      await hf.close();
    }
  });

  it("`holdfast dashboard` binds 127.0.0.1, prints its token link, and stops on SIGTERM", async () => {
    const child = spawn(
      process.execPath,
      [bin, "dashboard", "--port", "0", "--allow-actions", "--database", t.db.url],
      {
        cwd: repoRoot,
        env: { ...process.env, DATABASE_URL: "" },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    let stderr = "";
    const link = await new Promise<string>((resolve, reject) => {
      child.stderr.on("data", (d) => {
        stderr += String(d);
        const m = /open (http:\/\/\S+)/.exec(stderr);
        if (m?.[1]) resolve(m[1]);
      });
      child.once("exit", () => reject(new Error(`exited: ${stderr}`)));
    });
    expect(link).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/\?token=[A-Za-z0-9_-]{32}$/);
    const base = link.replace(/\?token=.*/, "");
    const r = await request(base);
    expect(r.status).toBe(200);
    expect(r.body).toContain(scene.running);
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGTERM");
    expect(await exited).toBe(0);
  });
});
