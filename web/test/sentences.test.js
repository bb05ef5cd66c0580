import assert from "node:assert/strict";
import { test } from "node:test";

import { applySentenceBudget } from "../src/sentences.js";

test("no budget leaves the text alone", () => {
  assert.deepEqual(applySentenceBudget("One. Two. Three.", null), { text: "One. Two. Three.", reached: false });
});

test("while streaming, the answer stops after the Nth complete sentence", () => {
  assert.deepEqual(applySentenceBudget("One. Two! Thr", 2), { text: "One. Two!", reached: true });
  assert.deepEqual(applySentenceBudget("One. Two!", 2), { text: "One. Two!", reached: false });
});

test("numbers and unfinished terminators are not sentence ends", () => {
  assert.equal(applySentenceBudget("Costs 3.50 dollars. Next", 1).text, "Costs 3.50 dollars.");
});

test("a finished answer counts its last sentence and is cut to the budget", () => {
  assert.deepEqual(applySentenceBudget("One. Two.", 2, true), { text: "One. Two.", reached: false });
  assert.equal(applySentenceBudget("One. Two. Three.", 2, true).text, "One. Two.");
});
