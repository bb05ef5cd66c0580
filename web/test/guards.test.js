import assert from "node:assert/strict";
import { test } from "node:test";

import { featureProblem, probeWebGPU, versionProblem } from "../src/guards.js";

const record = (fields = {}) => ({ model_id: "tiny-q4f16_1", webslm: { webllm_version: "0.2.79" }, ...fields });
const swiftshader = { available: true, features: new Set(["float32-filterable"]), description: "google swiftshader" };

test("a model built for the web-llm this app runs passes the version guard", () => {
  assert.equal(versionProblem(record(), "0.2.79"), null);
});

test("a model built for another web-llm is refused and the message names both versions", () => {
  const problem = versionProblem(record({ webslm: { webllm_version: "0.2.80" } }), "0.2.79");
  assert.match(problem, /Refusing to load tiny-q4f16_1: it was built for web-llm 0\.2\.80, but this app runs web-llm 0\.2\.79/);
});

test("a record that does not say which web-llm it was built for is refused", () => {
  assert.match(versionProblem(record({ webslm: undefined }), "0.2.79"), /does not record the web-llm version/);
});

test("an f16 model on an adapter without shader-f16 is refused, naming the f32 fallback", () => {
  const problem = featureProblem(record({ required_features: ["shader-f16"] }), swiftshader);
  assert.match(problem, /needs the WebGPU feature shader-f16, which this GPU adapter \(google swiftshader\)/);
  assert.match(problem, /q4f32_1/);
});

test("an f32 model needs no feature; an f16 one passes where shader-f16 exists", () => {
  assert.equal(featureProblem(record({ model_id: "tiny-q4f32_1" }), swiftshader), null);
  const f16 = { ...swiftshader, features: new Set(["shader-f16"]) };
  assert.equal(featureProblem(record({ required_features: ["shader-f16"] }), f16), null);
});

test("without a WebGPU adapter nothing loads", async () => {
  for (const nav of [{}, { gpu: { requestAdapter: async () => null } }, { gpu: { requestAdapter: async () => { throw new Error("x"); } } }]) {
    const gpu = await probeWebGPU(nav);
    assert.equal(gpu.available, false);
    assert.match(featureProblem(record(), gpu), /no WebGPU adapter/);
  }
});
