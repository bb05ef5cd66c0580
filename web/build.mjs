// Bundles the web client into web/dist/ with esbuild.
//
// The web-llm version is not written here by hand: it comes from docker/toolchain.lock.json (the
// one source of truth for every pin). The build refuses to run when the installed
// @mlc-ai/web-llm or package.json differ from that pin, and embeds the pin in the bundle, where the
// runtime guard compares it with each model's recorded `webslm.webllm_version`.
// The output appears whole: it is built into a temporary sibling and renamed over web/dist/.

import { build } from "esbuild";
import { chmodSync, cpSync, existsSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const web = dirname(fileURLToPath(import.meta.url));
const lockPath = join(web, "..", "docker", "toolchain.lock.json");
const STATIC_FILES = ["index.html", "check.html", "src/style.css"];
// The app, its engine worker, and the page `webslm check` drives (with its recording worker).
const ENTRY_POINTS = ["main.js", "worker.js", "check.js", "check-worker.js"];

function readJson(path) {
  return JSON.parse(readFileSync(path, "utf8"));
}

function pinnedWebllm() {
  if (!existsSync(lockPath)) {
    throw new Error(`${lockPath} is missing; the web-llm pin lives there (run: invoke toolchain --check)`);
  }
  const pin = readJson(lockPath).webllm;
  const declared = readJson(join(web, "package.json")).dependencies?.[pin.npm];
  const installed = readJson(join(web, "node_modules", pin.npm, "package.json")).version;
  if (declared !== pin.version || installed !== pin.version) {
    throw new Error(
      `${pin.npm}: the toolchain lock pins ${pin.version}, web/package.json names ${declared}, ` +
        `node_modules holds ${installed}; make package.json name exactly ${pin.version}, ` +
        `then run: npm ci --prefix web`,
    );
  }
  return pin.version;
}

async function main() {
  const version = pinnedWebllm();
  const staging = mkdtempSync(join(web, ".dist-"));
  try {
    await build({
      entryPoints: ENTRY_POINTS.map((file) => join(web, "src", file)),
      outdir: staging,
      bundle: true,
      splitting: true,
      format: "esm",
      target: "es2022",
      minify: true,
      legalComments: "linked",
      chunkNames: "chunk-[hash]",
      define: { __WEBLLM_VERSION__: JSON.stringify(version) },
      // @mlc-ai/web-tokenizers reaches for Node's url and module only when it runs under Node.js
      // (web-llm's own build ignores them the same way).
      external: ["url", "module"],
      logLevel: "warning",
    });
    for (const file of STATIC_FILES) {
      cpSync(join(web, file), join(staging, file.split("/").pop()));
    }
    writeFileSync(join(staging, "build-info.json"), JSON.stringify({ webllm_version: version }) + "\n");
    chmodSync(staging, 0o755);
    const final = join(web, "dist");
    rmSync(final, { recursive: true, force: true });
    renameSync(staging, final);
    console.log(`web/dist built with @mlc-ai/web-llm ${version}`);
  } catch (error) {
    rmSync(staging, { recursive: true, force: true });
    throw error;
  }
}

main().catch((error) => {
  console.error(`web build failed: ${error.message}`);
  process.exit(1);
});
