import assert from "node:assert/strict";
import { test } from "node:test";

import {
  DEFAULT_SAMPLING, downloadBytes, formatMB, isPinned, loadCatalog, movingRef, movingRefNote, pageOptions, recordPinned,
  relocateRecord, samplingOf, systemPromptOf, vramLabel,
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

test("a record counts as pinned only when its model library is pinned too", () => {
  const commit = "0123456789abcdef0123456789abcdef01234567";
  const folder = `https://hub.example/org/tiny/resolve/${commit}/`;
  const record = { model: folder, model_id: "tiny-q4f32_1", model_lib: `${folder}libs/tiny-q4f32_1-webgpu.wasm` };
  assert.equal(recordPinned(record), true);
  const libOnMain = { ...record, model_lib: "https://hub.example/org/tiny/resolve/main/libs/tiny-q4f32_1-webgpu.wasm" };
  assert.equal(recordPinned(libOnMain), false);
  const config = "https://hub.example/org/tiny/resolve/main/webllm-app-config.json";
  assert.notEqual(relocateRecord(libOnMain, config), libOnMain, "an unpinned library is not trusted as pinned");
});

test("the page says when a config from another site is read from a moving ref", () => {
  const commit = "0123456789abcdef0123456789abcdef01234567";
  const folder = `https://hub.example/org/tiny/resolve/${commit}/`;
  const record = { model: folder, model_id: "tiny-q4f32_1", model_lib: `${folder}libs/x.wasm` };
  const page = "http://127.0.0.1:8000/";
  assert.equal(movingRef("https://hub.example/org/tiny/resolve/main/webllm-app-config.json"), "main");
  assert.equal(movingRef(`${folder}webllm-app-config.json`), null);
  const onMain = movingRefNote({ record, configUrl: "https://hub.example/org/tiny/resolve/main/webllm-app-config.json" }, page);
  assert.match(onMain, /read from the branch "main"/);
  assert.equal(movingRefNote({ record, configUrl: `${folder}webllm-app-config.json` }, page), null);
  assert.match(movingRefNote({ record: { ...record, model_lib: "https://hub.example/x.wasm" }, configUrl: `${folder}webllm-app-config.json` }, page),
    /not pinned to a commit/);
  // a model this page's own server serves (webslm serve) is the user's own: no note
  assert.equal(movingRefNote({ record: built, configUrl: "http://127.0.0.1:8000/models/tiny/resolve/main/webllm-app-config.json" }, page), null);
});

test("the picker's GPU memory figure comes from vram_required_MB", () => {
  assert.equal(vramLabel({ vram_required_MB: 944.62 }), "needs ~945 MB of GPU memory");
  assert.equal(vramLabel({ vram_required_MB: 5.04 }), "needs ~5.0 MB of GPU memory");
  assert.equal(vramLabel({}), null);
});
