// The page `webslm check` drives: loads one model the way the app does (the AppConfig record
// relocated to where it is served, the same guards, web-llm in a Web Worker) and runs greedy
// generations whose per-step logits Python compares with transformers.
//
// Python calls `await window.webslmCheck({config, prompts, maxTokens})` and gets JSON back.
import { CreateWebWorkerMLCEngine } from "@mlc-ai/web-llm";

import { featureProblem, probeWebGPU, versionProblem } from "./guards.js";
import { floatsToBase64, takeRecording } from "./logits.js";
import { fetchJson, loadCatalog, pageOptions } from "./models.js";
import { BUILT_WEBLLM_VERSION } from "./version.js";

/** Greedy, unpenalized, exactly maxTokens long: the browser's own choice at every step. */
function greedyRequest(prompt, maxTokens) {
  return {
    messages: [{ role: "user", content: prompt }],
    stream: false,
    temperature: 0,
    top_p: 1,
    frequency_penalty: 0,
    presence_penalty: 0,
    max_tokens: maxTokens,
    ignore_eos: true,
  };
}

async function runCheck({ config, prompts, maxTokens }) {
  const options = pageOptions(new URL(`?config=${encodeURIComponent(config)}`, location.href).href);
  const [gpu, catalog] = await Promise.all([probeWebGPU(), loadCatalog(options, fetchJson)]);
  if (catalog.problems.length || catalog.entries.length !== 1) {
    return { refused: catalog.problems.join("; ") || `${config} must hold exactly one model` };
  }
  const { record } = catalog.entries[0];
  const refusal = versionProblem(record, BUILT_WEBLLM_VERSION) ?? featureProblem(record, gpu);
  if (refusal) return { refused: refusal, adapter: gpu.description, webgpu: gpu.available };
  const worker = new Worker(new URL("./check-worker.js", import.meta.url), { type: "module" });
  const engine = await CreateWebWorkerMLCEngine(worker, record.model_id, {
    appConfig: { model_list: [record], useIndexedDBCache: false },
  });
  const results = [];
  for (const prompt of prompts) {
    await engine.resetChat();
    await takeRecording(worker); // drop anything a previous step left
    const reply = await engine.chat.completions.create(greedyRequest(prompt, maxTokens));
    const recording = await takeRecording(worker);
    results.push({
      prompt,
      text: reply.choices[0].message.content,
      prompt_tokens: reply.usage.prompt_tokens,
      tokens: recording.tokens,
      vocab: recording.vocab,
      logits: floatsToBase64(recording.logits),
      prefill_tokens_per_s: reply.usage.extra.prefill_tokens_per_s,
      decode_tokens_per_s: reply.usage.extra.decode_tokens_per_s,
    });
  }
  await engine.unload();
  worker.terminate();
  return { model_id: record.model_id, adapter: gpu.description, webllm: BUILT_WEBLLM_VERSION, results };
}

window.webslmCheck = runCheck;
document.body.dataset.ready = "yes";
