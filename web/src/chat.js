// One answer: the request both compare panes share, and the streaming loop with the optional
// sentence budget. Works on any engine with web-llm's OpenAI-style interface
// (chat.completions.create with stream: true, interruptGenerate).
import { applySentenceBudget } from "./sentences.js";

/** The completion request: the shared system prompt and decoding, then the conversation. */
export function chatRequest(history, settings) {
  const system = settings.systemPrompt ? [{ role: "system", content: settings.systemPrompt }] : [];
  return {
    messages: [...system, ...history],
    stream: true,
    temperature: settings.temperature,
    top_p: settings.top_p,
  };
}

/**
 * Streams the answer, calling onText(text) as tokens arrive; returns the final text.
 * Reaching the sentence budget interrupts the engine and cuts the text there.
 */
export async function streamAnswer(engine, request, budget, onText) {
  let text = "";
  const stream = await engine.chat.completions.create(request);
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? "";
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
  return final;
}
