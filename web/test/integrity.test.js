import assert from "node:assert/strict";
import { createHash, webcrypto } from "node:crypto";
import { test } from "node:test";

import { integrityRefusal, integrityTargets, parseSri, sriOf, verifyRecord } from "../src/integrity.js";

globalThis.crypto ??= webcrypto; // Node 18 has no global WebCrypto

const sri = (bytes) => "sha256-" + createHash("sha256").update(bytes).digest("base64");
const FILES = {
  "https://m.example/tiny/resolve/main/libs/tiny-webgpu.wasm": Buffer.from("\0asm\x01\0\0\0"),
  "https://m.example/tiny/resolve/main/mlc-chat-config.json": Buffer.from('{"a": 1}'),
  "https://m.example/tiny/resolve/main/tokenizer.json": Buffer.from('{"t": 2}'),
};
const [LIB, CONFIG, TOKENIZER] = Object.keys(FILES);

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
    async fetch(url, fresh) { calls.push(["fetch", url, fresh]); return network(url, fresh); },
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

test("every file the engine reads before the weights is a target, in its web-llm cache", () => {
  const targets = integrityTargets(record());
  assert.deepEqual(targets.map((t) => [t.url, t.cache]), [
    [LIB, "webllm/wasm"], [CONFIG, "webllm/config"], [TOKENIZER, "webllm/model"],
  ]);
});

test("a record without integrity hashes is refused, not loaded unchecked", () => {
  assert.throws(() => integrityTargets(record({ integrity: undefined })), /no integrity hashes/);
});

test("untouched files pass and their verified bytes are returned for the cache", async () => {
  const checked = await verifyRecord(record(), store((url) => FILES[url]));
  assert.deepEqual(checked.failures, []);
  assert.deepEqual(checked.verified.map((v) => v.target.url), [LIB, CONFIG, TOKENIZER]);
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
