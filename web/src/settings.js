// The settings a user can change (system prompt, temperature, top-p, the answer's budget in tokens,
// the sentence budget), kept per model in localStorage so they survive a reload. A model without
// saved settings starts from its build's defaults (systemPromptOf, samplingOf in models.js).
import { samplingOf, systemPromptOf } from "./models.js";

const PREFIX = "webslm.settings.";

/**
 * The build's defaults for records (compare mode shares one set): the sampling of the first
 * record, the training system prompt of a fine-tuned one. maxTokens and budget null: automatic
 * (a quarter of the context window, see context.js) and no sentence limit.
 */
export function buildDefaults(records) {
  const tuned = records.find((r) => r.webslm?.finetune) ?? records[0];
  const sampling = samplingOf(records[0]);
  return {
    systemPrompt: systemPromptOf(tuned) ?? "",
    temperature: sampling.temperature,
    top_p: sampling.top_p,
    maxTokens: null,
    budget: null,
  };
}

const positiveInt = (value) => (Number.isInteger(value) && value > 0 ? value : null);
const inRange = (value, low, high, fallback) =>
  (typeof value === "number" && value >= low && value <= high ? value : fallback);

/** Saved settings over the defaults; a value that is missing or out of range keeps the default. */
export function mergeSettings(defaults, saved) {
  if (!saved || typeof saved !== "object") return { ...defaults };
  return {
    systemPrompt: typeof saved.systemPrompt === "string" ? saved.systemPrompt : defaults.systemPrompt,
    temperature: inRange(saved.temperature, 0, 2, defaults.temperature),
    top_p: inRange(saved.top_p, 0, 1, defaults.top_p),
    maxTokens: saved.maxTokens === null ? null : positiveInt(saved.maxTokens) ?? defaults.maxTokens,
    budget: saved.budget === null ? null : positiveInt(saved.budget) ?? defaults.budget,
  };
}

/** The settings for a model: what was saved for it, else the defaults. */
export function loadSettings(storage, modelId, defaults) {
  let saved = null;
  try {
    saved = JSON.parse(storage.getItem(PREFIX + modelId) ?? "null");
  } catch {
    saved = null;
  }
  return mergeSettings(defaults, saved);
}

/** Keeps settings for each model id. */
export function saveSettings(storage, modelIds, settings) {
  for (const id of modelIds) storage.setItem(PREFIX + id, JSON.stringify(settings));
}

/** Removes every model's saved settings (and nothing else of the storage). */
export function clearSettings(storage) {
  const keys = Array.from({ length: storage.length }, (_, i) => storage.key(i));
  for (const key of keys) if (key?.startsWith(PREFIX)) storage.removeItem(key);
}
