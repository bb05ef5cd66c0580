import assert from "node:assert/strict";
import { test } from "node:test";

import { benchmarkRequest, BENCHMARK, chatRequest, formatSpeed, streamAnswer } from "../src/chat.js";

/** An engine double with web-llm's streaming shape; it counts interrupts and tokens read. */
function engine(tokens, usage = null) {
  const seen = { requests: [], interrupts: 0, read: 0 };
  return {
    seen,
    interruptGenerate() { seen.interrupts += 1; },
    chat: { completions: { async create(request) {
      seen.requests.push(request);
      return (async function* () {
        for (const token of tokens) {
          seen.read += 1;
          yield { choices: [{ delta: { content: token } }] };
        }
        if (usage) yield { choices: [], usage };
      })();
    } } },
  };
}

const settings = { systemPrompt: "You are a clinic assistant.", temperature: 0.6, top_p: 0.9, budget: null };

test("the request carries the system prompt, the decoding and the whole conversation", () => {
  const history = [{ role: "user", content: "Hi" }, { role: "assistant", content: "Hello." }, { role: "user", content: "Why?" }];
  assert.deepEqual(chatRequest(history, settings), {
    messages: [{ role: "system", content: "You are a clinic assistant." }, ...history],
    stream: true, stream_options: { include_usage: true }, temperature: 0.6, top_p: 0.9,
  });
  assert.equal(chatRequest(history, { ...settings, systemPrompt: null }).messages.length, 3);
});

test("the answer's budget goes out as max_tokens; only role and content of each message are sent", () => {
  const history = [{ role: "user", content: "Hi", generated: 3, failed: null }];
  const request = chatRequest(history, { ...settings, maxTokens: 256 });
  assert.equal(request.max_tokens, 256);
  assert.deepEqual(request.messages.at(-1), { role: "user", content: "Hi" });
});

test("tokens stream to the page as they arrive", async () => {
  const shown = [];
  const e = engine(["Hel", "lo", " there."]);
  const { text, speed } = await streamAnswer(e, chatRequest([], settings), null, (t) => shown.push(t));
  assert.equal(text, "Hello there.");
  assert.equal(speed, null);
  assert.deepEqual(shown.slice(0, 3), ["Hel", "Hello", "Hello there."]);
  assert.equal(e.seen.interrupts, 0);
});

test("the sentence budget interrupts the engine and cuts the answer", async () => {
  const e = engine(["One.", " Two.", " Three", ".", " Four.", " Five."]);
  const { text } = await streamAnswer(e, chatRequest([], settings), 2, () => {});
  assert.equal(text, "One. Two.");
  assert.equal(e.seen.interrupts, 1);
  assert.ok(e.seen.read < 6, "generation stopped before the end");
});

test("prefill and decode speeds come from the final usage chunk", async () => {
  const usage = { prompt_tokens: 12, completion_tokens: 3, extra: { prefill_tokens_per_s: 512.34, decode_tokens_per_s: 41 } };
  const { speed } = await streamAnswer(engine(["a", "b"], usage), chatRequest([], settings), null, () => {});
  // web-llm counts decode steps; the first token came from the prefill: 3 steps, 4 tokens.
  assert.deepEqual(speed, { prefill: 512.34, decode: 41, promptTokens: 12, completionTokens: 4 });
  assert.equal(formatSpeed(speed), "prefill 512.3 tokens/s · decode 41.0 tokens/s");
});

test("the benchmark asks for a fixed prompt and exactly its fixed length, greedily", () => {
  const request = benchmarkRequest();
  assert.deepEqual(request.messages, [{ role: "user", content: BENCHMARK.prompt }]);
  assert.equal(request.max_tokens, BENCHMARK.maxTokens);
  assert.equal(request.ignore_eos, true);
  assert.equal(request.temperature, 0);
  assert.deepEqual(request, benchmarkRequest());
});
