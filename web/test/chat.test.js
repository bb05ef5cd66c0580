import assert from "node:assert/strict";
import { test } from "node:test";

import { chatRequest, streamAnswer } from "../src/chat.js";

/** An engine double with web-llm's streaming shape; it counts interrupts and tokens read. */
function engine(tokens) {
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
      })();
    } } },
  };
}

const settings = { systemPrompt: "You are a clinic assistant.", temperature: 0.6, top_p: 0.9, budget: null };

test("the request carries the system prompt, the decoding and the whole conversation", () => {
  const history = [{ role: "user", content: "Hi" }, { role: "assistant", content: "Hello." }, { role: "user", content: "Why?" }];
  assert.deepEqual(chatRequest(history, settings), {
    messages: [{ role: "system", content: "You are a clinic assistant." }, ...history],
    stream: true, temperature: 0.6, top_p: 0.9,
  });
  assert.equal(chatRequest(history, { ...settings, systemPrompt: null }).messages.length, 3);
});

test("tokens stream to the page as they arrive", async () => {
  const shown = [];
  const e = engine(["Hel", "lo", " there."]);
  const text = await streamAnswer(e, chatRequest([], settings), null, (t) => shown.push(t));
  assert.equal(text, "Hello there.");
  assert.deepEqual(shown.slice(0, 3), ["Hel", "Hello", "Hello there."]);
  assert.equal(e.seen.interrupts, 0);
});

test("the sentence budget interrupts the engine and cuts the answer", async () => {
  const e = engine(["One.", " Two.", " Three", ".", " Four.", " Five."]);
  const text = await streamAnswer(e, chatRequest([], settings), 2, () => {});
  assert.equal(text, "One. Two.");
  assert.equal(e.seen.interrupts, 1);
  assert.ok(e.seen.read < 6, "generation stopped before the end");
});
