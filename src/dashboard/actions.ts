// Retry and cancel from the dashboard: who may (the token), whether the page that asked is
// still right about the task (stale pages do nothing), and what the operator is told.
import { timingSafeEqual } from "node:crypto";
import type http from "node:http";
import type { Logger } from "pino";
import { HoldfastError, TaskNotFoundError, translateError } from "../errors.js";
import type { Holdfast } from "../holdfast.js";
import type { TaskDetail } from "../inspect/history.js";
import { HttpError } from "./http.js";
import type { ActionMode } from "./pages.js";

export type Action = "retry" | "cancel";

export const actionOf = (text: string): Action => {
  if (text === "retry" || text === "cancel") return text;
  throw new HttpError(404, "Not found", `Unknown action "${text}": use retry or cancel.`);
};

/** What a done action tells the operator: a fixed text per outcome, so a link cannot make
 *  the page say something else. */
export const doneText = {
  retried: (id: number) => `Task ${id} is pending again: a worker will start its next attempt.`,
  cancelling: (id: number) => `Cancel requested: task ${id}'s handler is being aborted.`,
  cancelled: (id: number) => `Task ${id} is cancelled: it will not start.`,
};
export type Done = keyof typeof doneText;
export const isDone = (s: string | null): s is Done => s !== null && Object.hasOwn(doneText, s);

export interface ActionResult {
  status: number;
  message: string;
  done?: Done;
}

/** The token that allows actions: given by a browser's cookie or an API client's header. */
export class ActionToken {
  constructor(
    readonly token: string | null,
    private readonly port: () => number,
  ) {}

  get cookieName(): string {
    // Cookies ignore the port: two dashboards on one host keep their tokens apart by name.
    return `holdfast_dashboard_${this.port()}`;
  }

  matches(given: string | undefined): boolean {
    if (this.token === null || given === undefined) return false;
    const a = Buffer.from(given);
    const b = Buffer.from(this.token);
    return a.length === b.length && timingSafeEqual(a, b);
  }

  mode(req: http.IncomingMessage): ActionMode {
    return { enabled: this.token !== null, authorized: this.matches(this.fromCookie(req)) };
  }

  /** Throws the 403 to show unless actions are on and `req` carries the token. */
  require(req: http.IncomingMessage, bearerToo: boolean): void {
    if (this.token === null)
      throw new HttpError(
        403,
        "Actions are off",
        "This dashboard is read-only: start it with --allow-actions to retry or cancel tasks.",
      );
    const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? "")?.[1];
    if (!this.matches(this.fromCookie(req)) && !(bearerToo && this.matches(bearer)))
      throw new HttpError(
        403,
        "Token needed",
        "Open the link with the token that `holdfast dashboard --allow-actions` printed at start, then try again.",
      );
  }

  private fromCookie(req: http.IncomingMessage): string | undefined {
    for (const part of (req.headers.cookie ?? "").split(";")) {
      const [k, ...v] = part.trim().split("=");
      if (k === this.cookieName) return v.join("=");
    }
    return undefined;
  }
}

/**
 * Runs `action` on the task as it is now (`current`, just read) through holdfast.retry /
 * holdfast.cancel, unless the page that asked saw it in another state (`seen`:
 * "state:attempt"); logs every outcome.
 */
export async function runAction(
  hf: Holdfast,
  log: Logger,
  current: TaskDetail,
  action: Action,
  seen: string | undefined,
  remote: string | undefined,
): Promise<ActionResult> {
  const id = current.id;
  const now = `${current.state}:${current.attempt}`;
  const result = (status: number, message: string, outcome: string): ActionResult => {
    log.info(
      {
        event: "dashboard_action",
        action,
        task: id,
        seen: seen ?? null,
        now,
        result: outcome,
        remote,
      },
      `dashboard: ${action} task ${id}: ${outcome}`,
    );
    return { status, message };
  };
  if (seen !== undefined && seen !== now) {
    const [state, attempt] = seen.split(":");
    return result(
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
      return result(404, `Nothing done: there is no task ${id}.`, "not_found");
    if (e instanceof HoldfastError && e.code === "42501")
      return result(
        403,
        `Nothing done: the dashboard's database role may not call holdfast.${action} (grant it holdfast_producer).`,
        "permission_denied",
      );
    throw err;
  }
  if (!ok)
    return result(
      409,
      action === "retry"
        ? `Nothing done: task ${id} is ${current.state}; only a dead-lettered or cancelled task can be retried (or its dedupe key already has a pending task).`
        : `Nothing done: task ${id} had already ended (${current.state}).`,
      "refused",
    );
  const done: Done =
    action === "retry" ? "retried" : current.state === "running" ? "cancelling" : "cancelled";
  return { ...result(200, doneText[done](id), "done"), done };
}
