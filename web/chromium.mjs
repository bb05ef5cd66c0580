// Headless Chromium (Debian's, or $CHROMIUM) through playwright-core, launched the one way every
// Node.js side of webslm launches it: `webslm check` (check-run.mjs), the web benchmark
// (bench/bench_web_integrity.mjs) and the tests' driver (tests/browser/driver.mjs).
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const web = dirname(fileURLToPath(import.meta.url));
const { chromium } = createRequire(join(web, "package.json"))("playwright-core");

// No network of its own, no first-run or sync chatter; --no-sandbox for root in containers/CI.
const QUIET = [
  "--headless", "--no-sandbox", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

/** Chromium with WebGPU (`--enable-unsafe-webgpu`) unless `webgpu` is false. Without a GPU,
 * WebGPU is SwiftShader's; `software` forces that (`--disable-gpu`) on any machine, as the tests
 * do so that every run sees the same adapter. `webslm check` and the bench leave it off: a real
 * model then loads on the machine's GPU where Chromium offers one. */
export function launchChromium({ webgpu = true, software = false } = {}) {
  const args = [...QUIET];
  if (software) args.push("--disable-gpu");
  if (webgpu) args.push("--enable-unsafe-webgpu");
  return chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args });
}
