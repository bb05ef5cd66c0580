// Subresource-integrity checks of a model before it loads.
//
// web-llm 0.2.79 ignores the `integrity` block of a model record (0.2.83+ enforces it), so the
// app checks it: the model library, mlc-chat-config.json and every tokenizer file are hashed and
// compared with the SRI strings the build recorded ("sha256-BASE64"). The weights are checked the
// same way against `webslm.weights` (web-llm's `integrity` has no place for them): first
// ndarray-cache.json, then each shard it lists, hashed with crypto.subtle as soon as that shard
// has arrived and put into Cache Storage only when it matches (a few shards in flight at a time,
// so memory stays at a few shards, not the whole model). The verified bytes go into the Cache
// Storage entries web-llm reads (`webllm/wasm`, `webllm/config`, `webllm/model`), so the engine
// loads exactly the bytes that were checked, once, and offline.

const ALGORITHMS = { sha256: "SHA-256", sha384: "SHA-384", sha512: "SHA-512" };
export const WEIGHTS_MANIFEST = "ndarray-cache.json";
const SHARDS_IN_FLIGHT = 4;

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

/** The recorded SRI of each weight file (webslm.weights); throws when the build recorded none. */
export function weightDigests(record) {
  const weights = record.webslm?.weights;
  if (!weights || typeof weights[WEIGHTS_MANIFEST] !== "string") {
    throw new Error(
      `${record.model_id} records no digests of its weight shards in its webllm-app-config.json ` +
        "(webslm.weights), so its weights cannot be checked; rebuild it with `invoke build`",
    );
  }
  return weights;
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
  const weights = weightDigests(record);
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
  targets.push({
    label: `weights manifest ${WEIGHTS_MANIFEST}`,
    url: new URL(WEIGHTS_MANIFEST, folder).href,
    sri: weights[WEIGHTS_MANIFEST],
    cache: "webllm/model",
  });
  return targets;
}

/**
 * {targets, failures}: one target per shard the (verified) ndarray-cache.json lists, with the
 * digest the build recorded and its size; a shard without a recorded digest is a failure.
 */
export function shardTargets(record, manifest) {
  const weights = weightDigests(record);
  const targets = [];
  const failures = [];
  for (const shard of manifest.records ?? []) {
    const sri = weights[shard.dataPath];
    if (typeof sri !== "string") {
      failures.push(`the weight shard ${shard.dataPath} has no digest in webslm.weights`);
      continue;
    }
    targets.push({
      label: `weight shard ${shard.dataPath}`,
      url: new URL(shard.dataPath, record.model).href,
      sri,
      bytes: shard.nbytes ?? 0,
      cache: "webllm/model",
    });
  }
  return { targets, failures };
}

function mismatch(target, actual) {
  return (
    `the ${target.label} (${target.url}) does not match the hash its build recorded ` +
    `(expected ${target.sri}, got ${actual})`
  );
}

/**
 * {match: {target, bytes, source} | null, failure: message | null, hashMs} for one target.
 * Copies are tried in order: web-llm's cache, the network, the network bypassing the HTTP cache
 * (a rebuild reuses URLs that were served as immutable). A cached copy that fails is dropped.
 * `onBytes(n)` hears of the bytes of each download once it has arrived.
 */
async function checkTarget(target, store, onBytes) {
  const expected = parseSri(target.sri);
  if (!expected) {
    return { match: null, failure: `the ${target.label} has an unreadable integrity value ${JSON.stringify(target.sri)}`, hashMs: 0 };
  }
  const sources = [
    ["cache", () => store.cached(target.cache, target.url)],
    ["network", () => store.fetch(target.url, false, onBytes)],
    ["network", () => store.fetch(target.url, true, onBytes)],
  ];
  let actual = null;
  let hashMs = 0;
  for (const [source, read] of sources) {
    const bytes = await read();
    if (!bytes) continue;
    const start = performance.now();
    actual = await sriOf(bytes, expected.prefix);
    hashMs += performance.now() - start;
    if (actual === target.sri) return { match: { target, bytes, source }, failure: null, hashMs };
    if (source === "cache") await store.drop(target.cache, target.url);
  }
  return { match: null, failure: mismatch(target, actual), hashMs };
}

/**
 * Check every target of integrityTargets; returns {failures: [message], verified: [{target, bytes, source}]}.
 * `store` is where bytes come from: {cached(cache, url), drop(cache, url), fetch(url, fresh, onBytes)}.
 */
export async function verifyRecord(record, store) {
  const failures = [];
  const verified = [];
  for (const target of integrityTargets(record)) {
    const { match, failure } = await checkTarget(target, store, () => {});
    if (match) verified.push(match);
    else failures.push(failure);
  }
  return { failures, verified };
}

/**
 * Check every weight shard the verified manifest lists and keep each one in Cache Storage as soon
 * as it matches; stops at the first shard that does not. `onProgress({shards, checkedShards,
 * totalBytes, arrivedBytes, checkedBytes})` hears of every step.
 * Returns {failures, bytes, seconds, hashSeconds, fromCache} (fromCache: shards already cached).
 */
export async function verifyShards(record, manifestBytes, store, onProgress = () => {}) {
  const started = performance.now();
  const manifest = JSON.parse(new TextDecoder().decode(manifestBytes));
  const { targets, failures } = shardTargets(record, manifest);
  const progress = {
    shards: targets.length,
    checkedShards: 0,
    totalBytes: targets.reduce((sum, t) => sum + t.bytes, 0),
    arrivedBytes: 0,
    checkedBytes: 0,
  };
  let hashMs = 0;
  let fromCache = 0;
  let next = 0;
  const report = () => onProgress({ ...progress, arrivedBytes: Math.min(progress.arrivedBytes, progress.totalBytes) });
  async function lane() {
    while (next < targets.length && !failures.length) {
      const target = targets[next++];
      const checked = await checkTarget(target, store, (n) => {
        progress.arrivedBytes += n;
        report();
      });
      hashMs += checked.hashMs;
      if (!checked.match) {
        failures.push(checked.failure);
        return;
      }
      if (checked.match.source === "cache") {
        fromCache += 1;
        progress.arrivedBytes += target.bytes;
      } else {
        await store.keep(target.cache, target.url, checked.match.bytes);
      }
      progress.checkedShards += 1;
      progress.checkedBytes += target.bytes;
      report();
    }
  }
  report();
  if (!failures.length) await Promise.all(Array.from({ length: SHARDS_IN_FLIGHT }, lane));
  return {
    failures,
    bytes: progress.checkedBytes,
    seconds: (performance.now() - started) / 1000,
    hashSeconds: hashMs / 1000,
    fromCache,
  };
}

/** The one-line refusal shown to the user. */
export function integrityRefusal(record, failures) {
  return (
    `Refusing to load ${record.model_id}: ${failures.join("; ")}. The files were changed after ` +
    "the build or the download is corrupt, so nothing of it was kept or run. Pick another model " +
    "above; if you built this one, rebuild it (invoke build) and reload this page; if it was shared " +
    "with you, ask for it to be published again."
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
    async fetch(url, fresh, onBytes = () => {}) {
      const response = await fetch(url, { cache: fresh ? "reload" : "default" });
      if (!response.ok) throw new Error(`could not download ${url}: HTTP ${response.status}`);
      // Read natively in one piece: a JavaScript loop over the body stream, for finer progress,
      // made the check of a 300 MB model ~25% slower (bench/bench_web_integrity.py).
      const bytes = await response.arrayBuffer();
      onBytes(bytes.byteLength);
      return bytes;
    },
    async keep(cacheName, url, bytes) {
      const type = url.endsWith(".wasm") ? "application/wasm" : url.endsWith(".json") ? "application/json" : "application/octet-stream";
      await (await caches.open(cacheName)).put(url, new Response(bytes, { headers: { "Content-Type": type } }));
    },
  };
}
