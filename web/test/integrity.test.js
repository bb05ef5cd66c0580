import assert from "node:assert/strict";
import { createHash, webcrypto } from "node:crypto";
import { test } from "node:test";

import {
  integrityRefusal, integrityTargets, parseSri, sriOf, verifyRecord, verifyShards,
} from "../src/integrity.js";

globalThis.crypto ??= webcrypto; // Node 18 has no global WebCrypto

const sri = (bytes) => "sha256-" + createHash("sha256").update(bytes).digest("base64");
const FOLDER = "https://m.example/tiny/resolve/main/";
const SHARDS = [Buffer.alloc(5000, 1), Buffer.alloc(3000, 2), Buffer.alloc(7000, 3), Buffer.alloc(10, 4), Buffer.alloc(20, 5)];
const MANIFEST = Buffer.from(JSON.stringify({
  records: SHARDS.map((bytes, i) => ({ dataPath: `params_shard_${i}.bin`, nbytes: bytes.length, records: [] })),
}));
const FILES = {
  [`${FOLDER}libs/tiny-webgpu.wasm`]: Buffer.from("\0asm\x01\0\0\0"),
  [`${FOLDER}mlc-chat-config.json`]: Buffer.from('{"a": 1}'),
  [`${FOLDER}tokenizer.json`]: Buffer.from('{"t": 2}'),
  [`${FOLDER}ndarray-cache.json`]: MANIFEST,
  ...Object.fromEntries(SHARDS.map((bytes, i) => [`${FOLDER}params_shard_${i}.bin`, bytes])),
};
const [LIB, CONFIG, TOKENIZER, WEIGHTS] = Object.keys(FILES);
const SHARD_URLS = SHARDS.map((_, i) => `${FOLDER}params_shard_${i}.bin`);

function record(overrides = {}) {
  return {
    model_id: "tiny-q4f32_1",
    model: "https://m.example/tiny/resolve/main/",
    model_lib: LIB,
    integrity: {
      model_lib: sri(FILES[LIB]),
      config: sri(FILES[CONFIG]),
      tokenizer: { "tokenizer.json": sri(FILES[TOKENIZER]) },
    },
    webslm: {
      weights: {
        "ndarray-cache.json": sri(MANIFEST),
        ...Object.fromEntries(SHARDS.map((bytes, i) => [`params_shard_${i}.bin`, sri(bytes)])),
      },
    },
    ...overrides,
  };
}

/** An in-memory store: what the network serves and what web-llm's caches hold. */
function store(network, cache = {}) {
  const calls = [];
  return {
    calls,
    cache,
    async cached(name, url) { calls.push(["cached", name, url]); return cache[`${name} ${url}`] ?? null; },
    async drop(name, url) { calls.push(["drop", name, url]); delete cache[`${name} ${url}`]; },
    async fetch(url, fresh, onBytes = () => {}) {
      calls.push(["fetch", url, fresh]);
      const bytes = network(url, fresh);
      if (bytes) onBytes(bytes.length);
      return bytes;
    },
    async keep(name, url, bytes) { calls.push(["keep", name, url]); cache[`${name} ${url}`] = Buffer.from(bytes); },
  };
}

test("SRI strings are parsed only in the sha2 formats web-llm 0.2.83 accepts", () => {
  assert.equal(parseSri("sha256-AAAA").algorithm, "SHA-256");
  assert.equal(parseSri("sha512-AA==").prefix, "sha512");
  for (const bad of ["md5-AAAA", "sha256:abcd", "sha256-", "", null, "sha256-a b"]) {
    assert.equal(parseSri(bad), null, String(bad));
  }
});

test("sriOf matches what the build writes (sha256, base64)", async () => {
  assert.equal(await sriOf(FILES[CONFIG]), sri(FILES[CONFIG]));
});

test("every file the engine reads before the shards is a target, in its web-llm cache", () => {
  const targets = integrityTargets(record());
  assert.deepEqual(targets.map((t) => [t.url, t.cache]), [
    [LIB, "webllm/wasm"], [CONFIG, "webllm/config"], [TOKENIZER, "webllm/model"], [WEIGHTS, "webllm/model"],
  ]);
});

test("a record without weight digests is refused, not loaded unchecked", () => {
  assert.throws(() => integrityTargets(record({ webslm: {} })), /records no digests of its weight shards.*webslm\.weights/);
});

test("a record without integrity hashes is refused, not loaded unchecked", () => {
  assert.throws(() => integrityTargets(record({ integrity: undefined })), /no integrity hashes/);
});

test("untouched files pass and their verified bytes are returned for the cache", async () => {
  const checked = await verifyRecord(record(), store((url) => FILES[url]));
  assert.deepEqual(checked.failures, []);
  assert.deepEqual(checked.verified.map((v) => v.target.url), [LIB, CONFIG, TOKENIZER, WEIGHTS]);
  assert.deepEqual(Buffer.from(checked.verified[0].bytes), FILES[LIB]);
});

test("a tampered library is refused with its URL and both hashes", async () => {
  const tampered = Buffer.from("\0asm\x01\0\0\0evil");
  const checked = await verifyRecord(record(), store((url) => (url === LIB ? tampered : FILES[url])));
  assert.equal(checked.failures.length, 1);
  assert.match(checked.failures[0], /model library .*tiny-webgpu\.wasm.* does not match/);
  assert.ok(checked.failures[0].includes(sri(tampered)));
  assert.match(integrityRefusal(record(), checked.failures), /^Refusing to load tiny-q4f32_1: /);
});

test("a stale cached copy is dropped and the network copy checked, bypassing the HTTP cache", async () => {
  const cache = { [`webllm/wasm ${LIB}`]: Buffer.from("old build") };
  const stale = Buffer.from("old build");
  const s = store((url, fresh) => (url === LIB && !fresh ? stale : FILES[url]), cache);
  const checked = await verifyRecord(record(), s);
  assert.deepEqual(checked.failures, []);
  assert.ok(s.calls.some(([op, , url]) => op === "drop" && url === LIB));
  assert.ok(s.calls.some(([op, url, fresh]) => op === "fetch" && url === LIB && fresh === true));
  assert.equal(checked.verified[0].source, "network");
});

test("a good cached copy is used without touching the network (offline)", async () => {
  const cache = Object.fromEntries(integrityTargets(record()).map((t) => [`${t.cache} ${t.url}`, FILES[t.url]]));
  const s = store(() => { throw new Error("offline"); }, cache);
  const checked = await verifyRecord(record(), s);
  assert.deepEqual(checked.failures, []);
  assert.ok(checked.verified.every((v) => v.source === "cache"));
});

test("every shard is hashed as it arrives and kept in web-llm's cache only once it matches", async () => {
  const s = store((url) => FILES[url]);
  const seen = [];
  const checked = await verifyShards(record(), MANIFEST, s, (p) => seen.push(p));
  assert.deepEqual(checked.failures, []);
  assert.equal(checked.bytes, 15030);
  for (const url of SHARD_URLS) assert.deepEqual(s.cache[`webllm/model ${url}`], FILES[url]);
  for (const url of SHARD_URLS) {
    const fetched = s.calls.findIndex(([op, u]) => op === "fetch" && u === url);
    const kept = s.calls.findIndex(([op, , u]) => op === "keep" && u === url);
    assert.ok(fetched >= 0 && kept > fetched, url);
  }
  const last = seen.at(-1);
  assert.deepEqual([last.checkedShards, last.shards, last.checkedBytes, last.totalBytes], [5, 5, 15030, 15030]);
  assert.ok(seen.some((p) => p.checkedShards > 0 && p.checkedShards < 5), "progress is reported per shard");
});

test("a tampered shard is refused and never enters the cache", async () => {
  const tampered = Buffer.from(SHARDS[2]);
  tampered[100] ^= 1;
  const s = store((url) => (url === SHARD_URLS[2] ? tampered : FILES[url]));
  const checked = await verifyShards(record(), MANIFEST, s);
  assert.equal(checked.failures.length, 1);
  assert.match(checked.failures[0], /^the weight shard params_shard_2\.bin \(.*params_shard_2\.bin\) does not match the hash its build recorded/);
  assert.ok(checked.failures[0].includes(sri(tampered)));
  assert.equal(s.cache[`webllm/model ${SHARD_URLS[2]}`], undefined);
  assert.ok(s.calls.some(([op, url, fresh]) => op === "fetch" && url === SHARD_URLS[2] && fresh === true), "refetched fresh once");
});

test("a shard the manifest lists without a recorded digest is refused before any download", async () => {
  const r = record();
  delete r.webslm.weights["params_shard_4.bin"];
  const s = store((url) => FILES[url]);
  const checked = await verifyShards(r, MANIFEST, s);
  assert.deepEqual(checked.failures, ["the weight shard params_shard_4.bin has no digest in webslm.weights"]);
  assert.ok(!s.calls.some(([op]) => op === "fetch"));
});

test("good cached shards are checked from the cache without the network; a bad cached one is replaced", async () => {
  const cache = Object.fromEntries(SHARD_URLS.map((url) => [`webllm/model ${url}`, FILES[url]]));
  cache[`webllm/model ${SHARD_URLS[1]}`] = Buffer.from("corrupted");
  const s = store((url) => FILES[url], cache);
  const checked = await verifyShards(record(), MANIFEST, s);
  assert.deepEqual(checked.failures, []);
  assert.equal(checked.fromCache, 4);
  assert.deepEqual(s.calls.filter(([op]) => op === "fetch").map(([, url]) => url), [SHARD_URLS[1]]);
  assert.deepEqual(s.cache[`webllm/model ${SHARD_URLS[1]}`], FILES[SHARD_URLS[1]]);
});
