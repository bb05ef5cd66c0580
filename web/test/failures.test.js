import assert from "node:assert/strict";
import { test } from "node:test";

import { describeAnswerFailure, describeLoadFailure, questionTooLong } from "../src/failures.js";

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

test("no Retry where retrying cannot help: files an old webslm built, a library that will not start", () => {
  const old = new Error("tiny-q4f32_1 records no digests of its weight shards in its webllm-app-config.json " +
    "(webslm.weights), so its weights cannot be checked; rebuild it with `invoke build`");
  const outdated = describeLoadFailure("tiny-q4f32_1", old, "check");
  assert.equal(outdated.headline, "Built by an older webslm");
  assert.match(outdated.summary, /Rebuild it with the current webslm \(invoke build\), then reload this page\.$/);
  assert.equal(outdated.retry, false);
  const library = describeLoadFailure("tiny-q4f32_1", new WebAssembly.CompileError("expected magic word"), "library");
  assert.equal(library.retry, false);
  assert.equal(describeLoadFailure("tiny-q4f32_1", new TypeError("Failed to fetch"), "check").retry, true);
});

test("each answer failure has its own headline and next step", () => {
  const overflow = describeAnswerFailure(new Error("Prompt tokens exceed context window size: number of prompt " +
    "tokens: 9891; context window size: 4096"));
  assert.equal(overflow.headline, "The conversation no longer fits the model's memory");
  assert.equal(overflow.retry, false);
  assert.equal(describeAnswerFailure(new Error("Device was lost")).retry, false);
  const other = describeAnswerFailure(new TypeError("x"));
  assert.deepEqual([other.headline, other.retry], ["The model stopped with an error", true]);
  const long = questionTooLong(5000, 3056);
  assert.match(long.summary, /5000 tokens, and at most 3056 fit/);
  assert.equal(long.retry, false);
});
