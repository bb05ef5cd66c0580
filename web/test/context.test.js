import assert from "node:assert/strict";
import { test } from "node:test";

import {
  byteCount, contextWindowOf, defaultAnswerTokens, fitConversation, promptLimit, promptStrings, templateCounter,
} from "../src/context.js";

// Qwen2's template as MLC-LLM v0.19.0 writes it into mlc-chat-config.json.
const QWEN2 = {
  system_template: "<|im_start|>system\n{system_message}<|im_end|>\n",
  system_message: "You are a helpful assistant.",
  roles: { user: "<|im_start|>user", assistant: "<|im_start|>assistant" },
  role_templates: { user: "{user_message}", assistant: "{assistant_message}" },
  role_content_sep: "\n", role_empty_sep: "\n", seps: ["<|im_end|>\n"],
};
const user = (content) => ({ role: "user", content });
const assistant = (content, generated) => ({ role: "assistant", content, generated });

test("the prompt is the strings web-llm prefills: system, each message, the answer's header", () => {
  assert.deepEqual(promptStrings(QWEN2, null, [user("Hi"), assistant("Hello."), user("Why?")]), [
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
    "<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|>assistant\nHello.<|im_end|>\n",
    "<|im_start|>user\nWhy?<|im_end|>\n",
    "<|im_start|>assistant\n",
  ]);
  assert.equal(promptStrings(QWEN2, "Be brief.", [user("Hi")])[0], "<|im_start|>system\nBe brief.<|im_end|>\n");
});

test("each string is counted on its own; an answer counts at least the tokens generated for it", () => {
  const count = templateCounter(QWEN2, (text) => [...text]);
  const strings = promptStrings(QWEN2, "S", [user("ab"), assistant("cd")]);
  assert.equal(count("S", [user("ab"), assistant("cd")]), strings.join("").length);
  const framed = "<|im_start|>assistant\n<|im_end|>\n".length;
  assert.equal(count("S", [user("ab"), assistant("cd", 500)]) - count("S", [user("ab"), assistant("cd")]),
    500 + framed - "<|im_start|>assistant\ncd<|im_end|>\n".length);
});

test("the oldest turns go first; the system prompt and the question always stay", () => {
  const count = templateCounter(QWEN2, (text) => ({ length: byteCount(text) }));
  const turns = [0, 1, 2, 3].map((n) => ({ user: user(`question ${n} ${"x".repeat(100)}`), assistant: assistant(`answer ${n} ${"y".repeat(100)}`), index: 2 * n }));
  const question = user("the new question");
  const everything = count("S", [...turns.flatMap((t) => [t.user, t.assistant]), question]);
  const all = fitConversation({ system: "S", turns, question, questionIndex: 8 }, count, everything);
  assert.equal(all.firstKept, 0);
  assert.equal(all.messages.length, 9);
  assert.equal(all.promptTokens, everything);
  const cut = fitConversation({ system: "S", turns, question, questionIndex: 8 }, count, everything - 1);
  assert.equal(cut.firstKept, 2, "exactly the oldest turn was dropped");
  assert.deepEqual(cut.messages.map((m) => m.content.slice(0, 10)),
    ["question 1", "answer 1 y", "question 2", "answer 2 y", "question 3", "answer 3 y", "the new qu"]);
  assert.ok(cut.promptTokens <= everything - 1);
  const none = fitConversation({ system: "S", turns, question, questionIndex: 8 }, count, count("S", [question]));
  assert.deepEqual([none.firstKept, none.messages], [8, [question]]);
  const tooLong = fitConversation({ system: "S", turns, question, questionIndex: 8 }, count, 10);
  assert.deepEqual(tooLong, { tooLong: count("S", [question]), limit: 10 });
});

test("the window comes from the record's overrides first; the answer budget from the window", () => {
  assert.equal(contextWindowOf({ overrides: { context_window_size: 2048 } }, { context_window_size: 4096 }), 2048);
  assert.equal(contextWindowOf({}, { context_window_size: 4096 }), 4096);
  assert.equal(defaultAnswerTokens(4096), 1024);
  assert.equal(defaultAnswerTokens(512), 128);
  assert.equal(defaultAnswerTokens(65536), 1024);
  assert.equal(promptLimit(4096, 1024), 4096 - 1024 - 16);
});

test("UTF-8 bytes bound the tokens when no tokenizer can be made", () => {
  assert.equal(byteCount("héllo"), 6);
});
