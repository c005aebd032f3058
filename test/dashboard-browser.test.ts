/// <reference lib="dom" />
// The dashboard in a real browser (headless Chromium shipped inside @sparticuz/chromium):
// what an operator sees during an incident, and a retry clicked on the page.
import { mkdir } from "node:fs/promises";
import chromium from "@sparticuz/chromium";
import puppeteer, { type Browser, type Page } from "puppeteer-core";
import { afterAll, beforeAll, expect, it } from "vitest";
import { type Dashboard, startDashboard } from "../src/dashboard/server.js";
import { repoRoot } from "./support/cli.js";
import { buildScene, type Scene, scene } from "./support/dashboard-scene.js";
import { useHoldfast } from "./support/db.js";
import { captureLogger } from "./support/log-capture.js";

const t = useHoldfast();
const logs = captureLogger();
let s: Scene;
let dashboard: Dashboard;
let browser: Browser;
let page: Page;
const dialogs: string[] = [];
/** Git-ignored (.tmp/); docs/dashboard.png is a copy of one. */
const screenshot = `${repoRoot}.tmp/dashboard.png`;

beforeAll(async () => {
  const [built, exe] = await Promise.all([buildScene(t.hf, t.db.url), chromium.executablePath()]);
  s = built;
  dashboard = await startDashboard({
    hf: t.hf,
    port: 0,
    allowActions: true,
    logger: logs.logger,
    refreshMs: 300,
  });
  browser = await puppeteer.launch({
    executablePath: exe,
    args: chromium.args,
    headless: true,
    defaultViewport: { width: 1280, height: 900 },
  });
  page = await browser.newPage();
  page.on("dialog", async (d) => {
    dialogs.push(d.message());
    await d.dismiss();
  });
});

afterAll(async () => {
  await browser?.close();
  await dashboard?.close();
  await s?.holder.end();
});

// innerText, not textContent: the text as rendered, what a person reads.
// biome-ignore lint/performance/useDomNodeTextContent: the rendered text is what is tested
const text = (selector: string) => page.$eval(selector, (el) => (el as HTMLElement).innerText);
const rowOf = (section: string, task: number) => text(`#${section} tr[data-task="${task}"]`);

it("shows the running dream with its held-for, the orphan, the waiting follow-up and the dead letter's error", async () => {
  await page.goto(dashboard.url);
  const running = await rowOf("running", s.runningId);
  expect(running).toContain(scene.running);
  expect(running).toContain(scene.worker);
  // Held for, e.g. "850ms", "4.6s", "1m02s".
  expect(await text(`#running tr[data-task="${s.runningId}"] .held`)).toMatch(
    /^(\d+ms|\d+\.\ds|\d+m\d\ds)$/,
  );
  expect(await rowOf("orphans", s.orphanId)).toContain(scene.orphaned);
  expect(await rowOf("waiting", s.followUpId)).toContain("its key is running another task");
  expect(await rowOf("dead", s.deadId)).toContain(scene.deadError);
  expect(await text(".statusline")).toMatch(/unhealthy: 1 orphaned task, 2 dead-lettered tasks/);
  // This browser has not presented the token: the page is read-only.
  expect(await page.$$("button[data-action]")).toHaveLength(0);

  // A key, payload and error made of markup render as text and run nothing.
  expect(await rowOf("dead", s.hostileId)).toContain(scene.hostileKey);
  expect(await rowOf("dead", s.hostileId)).toContain(scene.hostileError);
  expect(await page.$$eval("script", (els) => els.length)).toBe(1);
  expect(await page.$$eval("img", (els) => els.length)).toBe(0);
  await page.goto(`${dashboard.url}tasks/${s.hostileId}`);
  expect(await text("#payload")).toContain("</pre><script>alert('payload')</script>");
  expect(dialogs).toEqual([]);
});

it("redraws by itself: the held-for grows without a reload", async () => {
  await page.goto(dashboard.url);
  const held = () =>
    page.$eval(`#running tr[data-task="${s.runningId}"] .held`, (el) => el.textContent);
  const before = await held();
  await page.waitForFunction(
    (sel, prev) => document.querySelector(sel)?.textContent !== prev,
    { timeout: 5_000 },
    `#running tr[data-task="${s.runningId}"] .held`,
    before,
  );
  await mkdir(`${repoRoot}.tmp`, { recursive: true });
  await page.screenshot({ path: screenshot as `${string}.png`, fullPage: true });
});

it("retries a dead letter from the page once the browser has the token, and logs it", async () => {
  await page.goto(dashboard.actionsUrl ?? "");
  expect(page.url()).toBe(dashboard.url); // the token left the address bar
  expect(await text("#mode")).toBe("actions enabled");
  await Promise.all([
    page.waitForNavigation(),
    // A locator retries if a redraw replaced the button between finding and clicking it.
    page.locator(`#dead button[data-action="retry"][data-task="${s.deadId}"]`).click(),
  ]);
  expect(page.url()).toBe(`${dashboard.url}tasks/${s.deadId}?done=retried`);
  expect(await text(".notice")).toContain(`Task ${s.deadId} is pending again`);
  expect(await text("#task-state")).toBe("pending");
  const { rows } = await t.db.pool.query("select state from holdfast.tasks where id = $1", [
    s.deadId,
  ]);
  expect(rows[0].state).toBe("pending");
  await page.screenshot({ path: `${repoRoot}.tmp/dashboard-task.png`, fullPage: true });
  expect(logs.lines).toContainEqual(
    expect.objectContaining({
      event: "dashboard_action",
      action: "retry",
      task: s.deadId,
      result: "done",
    }),
  );
});
