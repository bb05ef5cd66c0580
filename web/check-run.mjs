// Runs `webslm check`'s browser side: opens check.html in headless Chromium with WebGPU, calls
// window.webslmCheck with the JSON read from stdin, prints the JSON it returns on stdout.
//
// usage: node web/check-run.mjs URL_OF_CHECK_HTML < input.json
import { readFileSync } from "node:fs";

import { launchChromium } from "./chromium.mjs";

async function main() {
  const [url] = process.argv.slice(2);
  const input = JSON.parse(readFileSync(0, "utf8"));
  const browser = await launchChromium();
  try {
    const page = await browser.newPage();
    page.on("console", (m) => { if (m.type() === "error") process.stderr.write(`browser: ${m.text()}\n`); });
    await page.goto(url, { waitUntil: "load" });
    await page.waitForFunction("document.body.dataset.ready === 'yes'");
    const result = await page.evaluate((arg) => window.webslmCheck(arg), input);
    process.stdout.write(JSON.stringify(result));
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  process.stderr.write(`${String(error.message ?? error).split("\n")[0]}\n`);
  process.exit(1);
});
