// Subresource-integrity checks of a model before it loads.
//
// web-llm 0.2.79 ignores the `integrity` block of a model record (0.2.83+ enforces it), so the
// app checks it: the model library, mlc-chat-config.json and every tokenizer file are hashed and
// compared with the SRI strings the build recorded ("sha256-BASE64"). The verified bytes are then
// put into the Cache Storage entries web-llm reads (`webllm/wasm`, `webllm/config`,
// `webllm/model`), so the engine loads exactly the bytes that were checked, once, and offline.

const ALGORITHMS = { sha256: "SHA-256", sha384: "SHA-384", sha512: "SHA-512" };

/** `{algorithm, digest}` of an SRI string, or null when it is not one we can check. */
export function parseSri(sri) {
  const match = typeof sri === "string" && /^(sha256|sha384|sha512)-([A-Za-z0-9+/]+={0,2})$/.exec(sri.trim());
  return match ? { algorithm: ALGORITHMS[match[1]], prefix: match[1], digest: match[2] } : null;
}

function base64(bytes) {
  let text = "";
  for (const byte of new Uint8Array(bytes)) text += String.fromCharCode(byte);
  return btoa(text);
}

/** The SRI string of bytes under an algorithm prefix ("sha256"). */
export async function sriOf(bytes, prefix = "sha256") {
  const digest = await crypto.subtle.digest(ALGORITHMS[prefix], bytes);
  return `${prefix}-${base64(digest)}`;
}

/** What must be checked for a record: label, URL, expected SRI and the web-llm cache it lives in. */
export function integrityTargets(record) {
  const integrity = record.integrity;
  if (!integrity || !integrity.config || !integrity.model_lib || !integrity.tokenizer) {
    throw new Error(
      `${record.model_id} has no integrity hashes in its webllm-app-config.json, so its files ` +
        "cannot be checked; rebuild it with `invoke build`",
    );
  }
  const folder = record.model;
  const targets = [
    { label: "model library", url: record.model_lib, sri: integrity.model_lib, cache: "webllm/wasm" },
    {
      label: "chat config mlc-chat-config.json",
      url: new URL("mlc-chat-config.json", folder).href,
      sri: integrity.config,
      cache: "webllm/config",
    },
  ];
  for (const [name, sri] of Object.entries(integrity.tokenizer)) {
    targets.push({ label: `tokenizer file ${name}`, url: new URL(name, folder).href, sri, cache: "webllm/model" });
  }
  return targets;
}

/**
 * Check every target; returns {failures: [message], verified: [{target, bytes, source}]}.
 * `store` is where bytes come from: {cached(cache, url), drop(cache, url), fetch(url, fresh)}.
 * Copies are tried in order: web-llm's cache, the network, the network bypassing the HTTP cache
 * (a rebuild reuses URLs that were served as immutable). A cached copy that fails is dropped.
 */
export async function verifyRecord(record, store) {
  const failures = [];
  const verified = [];
  for (const target of integrityTargets(record)) {
    const expected = parseSri(target.sri);
    if (!expected) {
      failures.push(`the ${target.label} has an unreadable integrity value ${JSON.stringify(target.sri)}`);
      continue;
    }
    const sources = [
      ["cache", () => store.cached(target.cache, target.url)],
      ["network", () => store.fetch(target.url, false)],
      ["network", () => store.fetch(target.url, true)],
    ];
    let actual = null;
    let match = null;
    for (const [source, read] of sources) {
      const bytes = await read();
      if (!bytes) continue;
      actual = await sriOf(bytes, expected.prefix);
      if (actual === target.sri) {
        match = { target, bytes, source };
        break;
      }
      if (source === "cache") await store.drop(target.cache, target.url);
    }
    if (match) {
      verified.push(match);
    } else {
      failures.push(
        `the ${target.label} (${target.url}) does not match the hash its build recorded ` +
          `(expected ${target.sri}, got ${actual})`,
      );
    }
  }
  return { failures, verified };
}

/** The one-line refusal shown to the user. */
export function integrityRefusal(record, failures) {
  return (
    `Refusing to load ${record.model_id}: ${failures.join("; ")}. The files were changed after ` +
    "the build or the download is corrupt; rebuild the model or download the dist folder again."
  );
}

/** The store over the browser's Cache Storage (shared with web-llm's worker) and fetch. */
export function browserStore() {
  return {
    async cached(cacheName, url) {
      const response = await (await caches.open(cacheName)).match(url);
      return response ? await response.arrayBuffer() : null;
    },
    async drop(cacheName, url) {
      await (await caches.open(cacheName)).delete(url);
    },
    async fetch(url, fresh) {
      const response = await fetch(url, { cache: fresh ? "reload" : "default" });
      if (!response.ok) throw new Error(`could not download ${url}: HTTP ${response.status}`);
      return await response.arrayBuffer();
    },
    async keep(cacheName, url, bytes) {
      const type = url.endsWith(".wasm") ? "application/wasm" : url.endsWith(".json") ? "application/json" : "application/octet-stream";
      await (await caches.open(cacheName)).put(url, new Response(bytes, { headers: { "Content-Type": type } }));
    },
  };
}
