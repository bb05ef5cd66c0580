// One answer: the request both compare panes share, the streaming loop with the optional
// sentence budget, and the speed figures web-llm reports. Works on any engine with web-llm's
// OpenAI-style interface (chat.completions.create with stream: true, interruptGenerate).
import { applySentenceBudget } from "./sentences.js";

/** The fixed request of the page's benchmark: the same prompt and length every time. */
export const BENCHMARK = {
  prompt: "Write a short story about a lighthouse keeper who finds a message in a bottle.",
  maxTokens: 128,
};

/**
 * The completion request: the shared system prompt and decoding, then the conversation (only
 * role and content of each message). `settings.maxTokens`, when set, is the answer's budget.
 */
export function chatRequest(history, settings) {
  const system = settings.systemPrompt ? [{ role: "system", content: settings.systemPrompt }] : [];
  const request = {
    messages: [...system, ...history.map(({ role, content }) => ({ role, content }))],
    stream: true,
    stream_options: { include_usage: true },
    temperature: settings.temperature,
    top_p: settings.top_p,
  };
  if (settings.maxTokens) request.max_tokens = settings.maxTokens;
  return request;
}

/** The benchmark request: fixed prompt, greedy, exactly BENCHMARK.maxTokens new tokens. */
export function benchmarkRequest() {
  return {
    messages: [{ role: "user", content: BENCHMARK.prompt }],
    stream: true,
    stream_options: { include_usage: true },
    temperature: 0,
    max_tokens: BENCHMARK.maxTokens,
    ignore_eos: true,
  };
}

/**
 * {prefill, decode, promptTokens, completionTokens} from a usage chunk, or null without one.
 * web-llm 0.2.79 reports as completion_tokens its decode steps (getCurRoundDecodingTotalTokens);
 * the first token of an answer comes out of the prefill, so the answer holds one token more.
 */
export function speedOf(usage) {
  const extra = usage?.extra;
  if (!extra || typeof extra.decode_tokens_per_s !== "number") return null;
  return {
    prefill: extra.prefill_tokens_per_s,
    decode: extra.decode_tokens_per_s,
    promptTokens: usage.prompt_tokens,
    completionTokens: usage.completion_tokens + 1,
  };
}

/** "prefill 512.3 tokens/s · decode 41.0 tokens/s" */
export function formatSpeed(speed) {
  return `prefill ${speed.prefill.toFixed(1)} tokens/s · decode ${speed.decode.toFixed(1)} tokens/s`;
}

/**
 * Streams the answer, calling onText(text) as tokens arrive; returns {text, speed}.
 * Reaching the sentence budget interrupts the engine and cuts the text there.
 */
export async function streamAnswer(engine, request, budget, onText) {
  let text = "";
  let usage = null;
  const stream = await engine.chat.completions.create(request);
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    const delta = chunk.choices?.[0]?.delta?.content ?? "";
    if (!delta) continue;
    text += delta;
    const cut = applySentenceBudget(text, budget);
    onText(cut.text);
    if (cut.reached) {
      engine.interruptGenerate();
      text = cut.text;
      break;
    }
  }
  const final = applySentenceBudget(text, budget, true).text;
  onText(final);
  return { text: final, speed: speedOf(usage) };
}
