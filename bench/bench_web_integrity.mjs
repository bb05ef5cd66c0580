// bench_web_integrity.py's browser side: times the app's weight-shard check in headless Chromium
// (WebGPU through SwiftShader or the machine's GPU) against what web-llm does alone.
//
// stdin:  {"base": URL of the app, "modelId", "shardUrls": [...], "runs": N}
// stdout: {"check_first": [s, ...], "hash_first", "webllm_first", "check_cached", "read_cached",
//          "hash_only"}: seconds, one per run; each run starts in a fresh context (empty caches).
import { readFileSync } from "node:fs";

import { launchChromium } from "../web/chromium.mjs";

const SETTLED = "['refused','error','ready'].includes(document.querySelector('.pane')?.dataset.state)";
const CACHE = "webllm/model";

// What web-llm 0.2.79 does without our check: Cache.add of every shard, four loops in parallel.
async function webllmAlone({ urls, cacheName }) {
  const cache = await caches.open(cacheName);
  const started = performance.now();
  const lanes = 4;
  await Promise.all(Array.from({ length: lanes }, async (_, lane) => {
    for (let i = lane; i < urls.length; i += lanes) await cache.add(new Request(urls[i]));
  }));
  return (performance.now() - started) / 1000;
}

async function readCached({ urls, cacheName }) {
  const cache = await caches.open(cacheName);
  const started = performance.now();
  for (const url of urls) await (await cache.match(url)).arrayBuffer();
  return (performance.now() - started) / 1000;
}

async function hashOnly({ urls, cacheName }) {
  const cache = await caches.open(cacheName);
  const buffers = [];
  for (const url of urls) buffers.push(await (await cache.match(url)).arrayBuffer());
  const started = performance.now();
  for (const b of buffers) await crypto.subtle.digest("SHA-256", b);
  return (performance.now() - started) / 1000;
}

// One load of the model in the app: [check seconds, hashing seconds] as the app measured them.
async function appLoad(page, base, modelId) {
  await page.goto(`${base}?a=${encodeURIComponent(modelId)}`, { waitUntil: "load" });
  await page.waitForFunction("document.body.dataset.ready === 'yes'", null, { timeout: 120000 });
  if (await page.evaluate("document.querySelector('.pane').dataset.checkSeconds") == null) {
    await page.click("#load");
  }
  await page.waitForFunction(SETTLED, null, { timeout: 300000 });
  const pane = await page.evaluate("({...document.querySelector('.pane').dataset})");
  if (!("checkSeconds" in pane)) throw new Error(`the app did not check the shards: ${JSON.stringify(pane)}`);
  return [Number(pane.checkSeconds), Number(pane.hashSeconds)];
}

async function main() {
  const { base, modelId, shardUrls, runs } = JSON.parse(readFileSync(0, "utf8"));
  const js = { urls: shardUrls, cacheName: CACHE };
  const figures = Object.fromEntries(["check_first", "hash_first", "webllm_first", "check_cached",
    "read_cached", "hash_only"].map((k) => [k, []]));
  const browser = await launchChromium();
  try {
    for (let run = 0; run < runs; run++) {
      let context = await browser.newContext();
      let page = await context.newPage();
      const [check, hashing] = await appLoad(page, base, modelId);
      figures.check_first.push(check);
      figures.hash_first.push(hashing);
      figures.check_cached.push((await appLoad(page, base, modelId))[0]);  // from the cache
      figures.read_cached.push(await page.evaluate(readCached, js));
      figures.hash_only.push(await page.evaluate(hashOnly, js));
      await context.close();
      context = await browser.newContext();
      page = await context.newPage();
      await page.goto(`${base}build-info.json`, { waitUntil: "load" });
      figures.webllm_first.push(await page.evaluate(webllmAlone, js));
      await context.close();
    }
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(figures));
}

main().catch((error) => {
  process.stderr.write(`${String(error.message ?? error).split("\n")[0]}\n`);
  process.exit(1);
});
