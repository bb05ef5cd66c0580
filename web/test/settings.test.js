import assert from "node:assert/strict";
import { test } from "node:test";

import { buildDefaults, clearSettings, loadSettings, mergeSettings, saveSettings } from "../src/settings.js";

/** localStorage's interface over a Map. */
function memoryStorage() {
  const map = new Map();
  return {
    get length() { return map.size; },
    key: (i) => [...map.keys()][i] ?? null,
    getItem: (k) => (map.has(k) ? map.get(k) : null),
    setItem: (k, v) => map.set(k, String(v)),
    removeItem: (k) => map.delete(k),
  };
}

const tiny = { model_id: "tiny", overrides: { temperature: 0.6, top_p: 0.9 }, webslm: { system_prompt: "Answer briefly." } };

test("a model without saved settings starts from its build's defaults", () => {
  const defaults = buildDefaults([tiny]);
  assert.deepEqual(defaults, { systemPrompt: "Answer briefly.", temperature: 0.6, top_p: 0.9, maxTokens: null, budget: null });
  assert.deepEqual(loadSettings(memoryStorage(), "tiny", defaults), defaults);
});

test("settings are kept per model and survive a new page (a new read of the storage)", () => {
  const storage = memoryStorage();
  const defaults = buildDefaults([tiny]);
  const mine = { systemPrompt: "Talk like a pirate.", temperature: 1.1, top_p: 0.5, maxTokens: 64, budget: 2 };
  saveSettings(storage, ["tiny"], mine);
  assert.deepEqual(loadSettings(storage, "tiny", defaults), mine);
  assert.deepEqual(loadSettings(storage, "other", defaults), defaults);
  storage.setItem("unrelated", "kept");
  clearSettings(storage);
  assert.deepEqual(loadSettings(storage, "tiny", defaults), defaults);
  assert.equal(storage.getItem("unrelated"), "kept");
});

test("a saved value out of range or of the wrong type keeps the default", () => {
  const defaults = buildDefaults([tiny]);
  const merged = mergeSettings(defaults, { temperature: 7, top_p: "x", maxTokens: -3, systemPrompt: 5 });
  assert.deepEqual(merged, defaults);
  const storage = memoryStorage();
  storage.setItem("webslm.settings.tiny", "{not json");
  assert.deepEqual(loadSettings(storage, "tiny", defaults), defaults);
});
