import assert from "node:assert/strict";
import { test } from "node:test";

import { floatsToBase64, LogitRecorder } from "../src/logits.js";

test("the recorder observes without changing the logits and hands back steps × vocab", () => {
  const recorder = new LogitRecorder();
  const step1 = new Float32Array([0.5, -1, 2]);
  assert.equal(recorder.processLogits(step1), step1);
  recorder.processSampledToken(2);
  step1[0] = 99; // web-llm reuses its buffer: the recorder kept a copy
  recorder.processLogits(new Float32Array([1, 1, 1]));
  recorder.processSampledToken(0);
  const taken = recorder.take();
  assert.deepEqual(taken.tokens, [2, 0]);
  assert.equal(taken.vocab, 3);
  assert.deepEqual([...taken.logits], [0.5, -1, 2, 1, 1, 1]);
  assert.deepEqual(recorder.take(), { tokens: [], vocab: 0, logits: new Float32Array(0) });
});

test("logits travel as base64 of little-endian float32", () => {
  const floats = new Float32Array([1, -2.5, 3e-8]);
  const bytes = Buffer.from(floatsToBase64(floats), "base64");
  assert.deepEqual([...new Float32Array(bytes.buffer, bytes.byteOffset, 3)], [...floats]);
});
