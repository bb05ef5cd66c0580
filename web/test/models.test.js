import assert from "node:assert/strict";
import { test } from "node:test";

import {
  DEFAULT_SAMPLING, downloadBytes, formatMB, isPinned, loadCatalog, pageOptions, relocateRecord, samplingOf, systemPromptOf,
} from "../src/models.js";

const built = {
  model: "http://127.0.0.1:8000/models/tiny/resolve/main/",
  model_id: "tiny-q4f32_1",
  model_lib: "http://127.0.0.1:8000/models/tiny/resolve/main/libs/tiny-q4f32_1-webgpu.wasm",
};

test("without ?config the app reads the models index of `invoke serve`", () => {
  const options = pageOptions("http://127.0.0.1:9000/?compare=1&a=x&b=y");
  assert.deepEqual(options, { configs: [], index: "http://127.0.0.1:9000/models/index.json", compare: true, a: "x", b: "y" });
});

test("?config may repeat and is resolved against the page", () => {
  const options = pageOptions("http://h/app/?config=/d1/webllm-app-config.json&config=https://cdn/x/webllm-app-config.json");
  assert.deepEqual(options.configs, ["http://h/d1/webllm-app-config.json", "https://cdn/x/webllm-app-config.json"]);
  assert.equal(options.index, null);
});

test("a record moves to the folder its AppConfig was read from, library included", () => {
  const moved = relocateRecord(built, "http://127.0.0.1:8123/models/tiny/resolve/main/webllm-app-config.json");
  assert.equal(moved.model, "http://127.0.0.1:8123/models/tiny/resolve/main/");
  assert.equal(moved.model_lib, "http://127.0.0.1:8123/models/tiny/resolve/main/libs/tiny-q4f32_1-webgpu.wasm");
  assert.equal(relocateRecord(built, built.model + "webllm-app-config.json"), built);
});

test("a record pinned to a commit keeps its URLs, even when its AppConfig is read from main", () => {
  const commit = "0123456789abcdef0123456789abcdef01234567";
  const pinned = {
    model: `https://hub.example/org/tiny/resolve/${commit}/`,
    model_id: "tiny-q4f32_1",
    model_lib: `https://hub.example/org/tiny/resolve/${commit}/libs/tiny-q4f32_1-webgpu.wasm`,
  };
  assert.equal(relocateRecord(pinned, "https://mirror.example/org/tiny/resolve/main/webllm-app-config.json"), pinned);
  assert.ok(isPinned(pinned.model));
  for (const unpinned of [built.model, "https://hub.example/org/tiny/resolve/main/", "https://h/x/resolve/0123abc/", undefined]) {
    assert.equal(isPinned(unpinned), false, String(unpinned));
  }
});

test("the catalog joins several AppConfigs and reports broken ones without hiding the rest", async () => {
  const documents = {
    "http://h/models/index.json": { models: ["/models/tiny/resolve/main/webllm-app-config.json", "/models/gone/resolve/main/webllm-app-config.json", "/bad.json"] },
    "http://h/models/tiny/resolve/main/webllm-app-config.json": { model_list: [built, built] },
    "http://h/bad.json": { nothing: true },
  };
  const fetchJson = async (url) => {
    if (!(url in documents)) throw new Error("HTTP 404");
    return documents[url];
  };
  const { entries, problems } = await loadCatalog(pageOptions("http://h/"), fetchJson);
  assert.deepEqual(entries.map((e) => e.record.model), ["http://h/models/tiny/resolve/main/"]);
  assert.equal(problems.length, 3);
  assert.match(problems.join("\n"), /gone.*HTTP 404/);
  assert.match(problems.join("\n"), /bad\.json is not a WebLLM AppConfig/);
  assert.match(problems.join("\n"), /repeats model id tiny-q4f32_1/);
});

test("the training system prompt comes from webslm.json, else the build's", () => {
  assert.equal(systemPromptOf({ webslm: { system_prompt: "Build.", finetune: { system_prompt: "Trained." } } }), "Trained.");
  assert.equal(systemPromptOf({ webslm: { system_prompt: "Build.", finetune: null } }), "Build.");
  assert.equal(systemPromptOf({}), null);
});

test("sampling defaults come from the build's overrides", () => {
  assert.deepEqual(samplingOf({ overrides: { temperature: 0.3, top_p: 0.5 } }), { temperature: 0.3, top_p: 0.5 });
  assert.deepEqual(samplingOf({ overrides: { temperature: 0.3 } }), { temperature: 0.3, top_p: DEFAULT_SAMPLING.top_p });
  assert.deepEqual(samplingOf({}), DEFAULT_SAMPLING);
});

test("the first-load size is the weight shards plus the library", () => {
  const bytes = downloadBytes({ records: [{ nbytes: 3 * 1048576 }, { nbytes: 1048576 }] }, 1048576);
  assert.equal(bytes, 5 * 1048576);
  assert.equal(formatMB(bytes), "5.0 MB");
  assert.equal(formatMB(300 * 1048576), "300 MB");
});
