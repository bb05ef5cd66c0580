import assert from "node:assert/strict";
import { test } from "node:test";

import { conversationMarkdown } from "../src/conversations.js";

test("a conversation exports as Markdown with each turn under who said it", () => {
  const conversation = {
    title: "hello there",
    messages: [
      { role: "user", content: "hello there" },
      { role: "assistant", content: "Hi! Here is a list:\n\n- one\n- two" },
      { role: "user", content: "and now?" },
      { role: "assistant", content: "", failure: { headline: "The model stopped with an error" } },
    ],
  };
  const markdown = conversationMarkdown(conversation, "tiny-q4f32_1", new Date("2026-12-07T23:00:00Z"));
  assert.equal(markdown, [
    "# hello there", "", "A conversation with tiny-q4f32_1, exported 2026-12-07T23:00:00.000Z.",
    "", "## You", "", "hello there",
    "", "## tiny-q4f32_1", "", "Hi! Here is a list:\n\n- one\n- two",
    "", "## You", "", "and now?",
    "", "## tiny-q4f32_1", "", "*No answer: The model stopped with an error.*", "",
  ].join("\n"));
});
