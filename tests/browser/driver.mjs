// A small line-protocol driver for headless Chromium (Debian's /usr/bin/chromium through npm
// playwright-core), so pytest can keep one browser per test module.
//
// stdin:  one JSON request per line  {"id", "op", ...}
// stdout: one JSON reply per line    {"id", "ok": true, "value"} or {"id", "ok": false, "error"}
// ops: open {webgpu} -> page id · goto {page, url} · wait {page, js, timeout} · eval {page, js}
//      click {page, selector} · fill {page, selector, text} · screenshot {page, path}
//      log {page} -> {console, errors, requests} · close {page}
//      viewport {page, width, height} · media {page, colorScheme} · press {page, key}
//      type {page, text} · grant {page, permissions}
//      download {page, selector} -> {name, text} (clicks, returns the file the page saved)
//      axe {page} -> axe-core's violations [{id, impact, help, targets}] (axe-core from web/node_modules)
// One browser per launch-flag set (with or without the SwiftShader WebGPU adapter); each page
// gets a fresh context, so Cache Storage never leaks between tests.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { createInterface } from "node:readline";

import { launchChromium } from "../../web/chromium.mjs";

const AXE = createRequire(new URL("../../web/package.json", import.meta.url)).resolve("axe-core/axe.min.js");
const browsers = new Map();
const pages = new Map();
let nextPage = 1;

async function browserFor(webgpu) {
  const key = webgpu ? "webgpu" : "plain";
  if (!browsers.has(key)) {
    browsers.set(key, launchChromium({ webgpu, software: true }));
  }
  return await browsers.get(key);
}

async function open({ webgpu }) {
  const context = await (await browserFor(Boolean(webgpu))).newContext({ viewport: { width: 1200, height: 800 } });
  const page = await context.newPage();
  const record = { page, context, console: [], errors: [], requests: [] };
  page.on("console", (m) => record.console.push({ type: m.type(), text: m.text() }));
  page.on("pageerror", (e) => record.errors.push(String(e)));
  page.on("worker", (w) => w.on("console", (m) => record.console.push({ type: m.type(), text: m.text(), worker: true })));
  context.on("request", (r) => record.requests.push({ url: r.url(), method: r.method() }));
  const id = nextPage++;
  pages.set(id, record);
  return id;
}

const ops = {
  open,
  goto: async ({ page, url }) => { await pages.get(page).page.goto(url, { waitUntil: "load" }); },
  wait: async ({ page, js, timeout }) => {
    await pages.get(page).page.waitForFunction(js, null, { timeout: timeout ?? 20000 });
  },
  eval: async ({ page, js }) => await pages.get(page).page.evaluate(js),
  click: async ({ page, selector }) => { await pages.get(page).page.click(selector); },
  fill: async ({ page, selector, text }) => { await pages.get(page).page.fill(selector, text); },
  screenshot: async ({ page, path }) => { await pages.get(page).page.screenshot({ path, fullPage: true }); },
  viewport: async ({ page, width, height }) => { await pages.get(page).page.setViewportSize({ width, height }); },
  media: async ({ page, colorScheme }) => { await pages.get(page).page.emulateMedia({ colorScheme }); },
  press: async ({ page, key }) => { await pages.get(page).page.keyboard.press(key); },
  type: async ({ page, text }) => { await pages.get(page).page.keyboard.type(text); },
  grant: async ({ page, permissions }) => {
    const { page: p, context } = pages.get(page);
    await context.grantPermissions(permissions, { origin: new URL(p.url()).origin });
  },
  download: async ({ page, selector }) => {
    const p = pages.get(page).page;
    const [download] = await Promise.all([p.waitForEvent("download"), p.click(selector)]);
    return { name: download.suggestedFilename(), text: readFileSync(await download.path(), "utf8") };
  },
  axe: async ({ page }) => {
    const p = pages.get(page).page;
    await p.addScriptTag({ path: AXE });
    const result = await p.evaluate(() => globalThis.axe.run(document));
    return result.violations.map((v) => ({
      id: v.id, impact: v.impact, help: v.help, targets: v.nodes.map((n) => n.target.join(" ")),
    }));
  },
  log: async ({ page }) => {
    const { console: messages, errors, requests } = pages.get(page);
    return { console: messages, errors, requests };
  },
  close: async ({ page }) => {
    await pages.get(page).context.close();
    pages.delete(page);
  },
};

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const request = JSON.parse(line);
  let reply;
  try {
    const value = await ops[request.op](request);
    reply = { id: request.id, ok: true, value: value ?? null };
  } catch (error) {
    reply = { id: request.id, ok: false, error: String(error.message ?? error).split("\n")[0] };
  }
  process.stdout.write(JSON.stringify(reply) + "\n");
}
for (const browser of browsers.values()) await (await browser).close();
