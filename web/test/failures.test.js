import assert from "node:assert/strict";
import { test } from "node:test";

import { describeAnswerFailure, describeLoadFailure } from "../src/failures.js";

test("a load failure names the model and the step in words, keeping the raw error as detail", () => {
  const cases = [
    [new TypeError("Failed to fetch"), /a file could not be downloaded.*press Retry/],
    [new Error("Cannot fetch http://127.0.0.1:8000/models/x/resolve/main/params_shard_0.bin"), /could not be downloaded/],
    [new DOMException("The quota has been exceeded.", "QuotaExceededError"), /no room left/],
    [new Error("Device was lost: out of memory"), /GPU ran out of memory/],
    [new WebAssembly.CompileError("WebAssembly.instantiate(): expected magic word"), /model library would not start/],
  ];
  for (const [error, words] of cases) {
    const { summary, detail } = describeLoadFailure("tiny-q4f32_1", error, "engine");
    assert.match(summary, /^Could not load tiny-q4f32_1: /);
    assert.match(summary, words, detail);
    assert.ok(!summary.includes("TypeError") && !summary.includes("undefined"), summary);
    assert.ok(detail.includes(error.message));
  }
});

test("an unrecognised error is described by the step the load had reached", () => {
  const raw = new TypeError("Cannot read properties of undefined (reading 'buffer')");
  const words = {
    check: /its files could not be checked/,
    library: /the model library would not start in this browser/,
    engine: /unexpected error while loading the weights onto the GPU\. Press Retry/,
  };
  for (const [step, pattern] of Object.entries(words)) {
    const { summary } = describeLoadFailure("tiny-q4f32_1", raw, step);
    assert.match(summary, pattern);
    assert.ok(!summary.includes("TypeError") && !summary.includes("undefined"), summary);
  }
});

test("a failed answer says so in words", () => {
  const { summary, detail } = describeAnswerFailure(new TypeError("Cannot read properties of undefined"));
  assert.match(summary, /^No answer: the model stopped with an error/);
  assert.equal(detail, "TypeError: Cannot read properties of undefined");
  const lost = describeAnswerFailure(new Error("Device was lost: out of memory"));
  assert.match(lost.summary, /^No answer: the GPU ran out of memory or stopped responding/);
});
