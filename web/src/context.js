// Fitting a conversation into the model's context window.
//
// web-llm refuses a request whose prompt, with what its KV cache already holds, exceeds the
// model's `context_window_size` (ContextWindowSizeExceededError), and stops an answer when the
// window is full. So every request is cut to fit the window minus the answer's budget
// (max_tokens): the system prompt and the new question always stay, the oldest turns go first.
// Prompts are counted as web-llm 0.2.79 counts them (Conversation.getPromptArray in its
// lib/index.js): the conversation template turns each message into one string, each string is
// encoded on its own with the model's tokenizer, and the counts are summed. The tokenizer is the
// one web-llm bundles (@mlc-ai/web-tokenizers), made from the tokenizer file the page checked.

/** Tokens kept free besides the answer's budget: web-llm's KV cache holds each answer as it was
 * generated, which can encode a few tokens longer than the same text encoded again. */
const SLACK_TOKENS = 16;

/** The answer's budget when the user has not set one: a quarter of the window, at most 1024. */
export function defaultAnswerTokens(contextWindow) {
  return Math.max(16, Math.min(1024, Math.floor(contextWindow / 4)));
}

/** The context window a record runs with: its overrides first (web-llm applies them), then the chat config. */
export function contextWindowOf(record, chatConfig) {
  return record.overrides?.context_window_size ?? chatConfig.context_window_size;
}

const orEmpty = (value, fallback) => (value || value === "" ? value : fallback);

/** For a chat config without a usable conv_template: role names and a newline around each message. */
const PLAIN_TEMPLATE = {
  system_template: "{system_message}\n", system_message: "", roles: { user: "user", assistant: "assistant" }, seps: ["\n"],
};

/**
 * The strings web-llm prefills for a request, one per message, in order: the system prompt, each
 * message of `messages` ({role: "user"|"assistant", content}), then the answer's header.
 * `template` is mlc-chat-config.json's conv_template; `system` overrides its system_message.
 */
export function promptStrings(template, system, messages) {
  const systemMessage = system ?? template.system_message ?? "";
  const systemPrompt = (template.system_template ?? "{system_message}").replace("{system_message}", systemMessage);
  const strings = systemPrompt === "" ? [] : [systemPrompt];
  const seps = template.seps?.length ? template.seps : [""];
  messages.forEach((message, i) => {
    const placeholder = `{${message.role}_message}`;
    const body = template.role_templates?.[message.role]?.replace(placeholder, message.content) ?? message.content;
    const noRole = template.add_role_after_system_message === false && systemPrompt !== "" && i === 0;
    const prefix = noRole ? "" : template.roles[message.role] + orEmpty(template.role_content_sep, ": ");
    strings.push(prefix + body + seps[i % seps.length]);
  });
  strings.push(template.roles.assistant + orEmpty(template.role_empty_sep, ": "));
  return strings;
}

/**
 * A counter over a tokenizer's encode(): the prompt tokens web-llm holds for a request. An answer
 * that carries `generated` (the tokens web-llm generated for it) counts at least that many plus its
 * template: with its KV cache reused, web-llm holds the generated tokens, not the text encoded again.
 */
export function templateCounter(template, encode) {
  return (system, messages) => {
    const strings = promptStrings(template, system, messages);
    const offset = strings.length - messages.length - 1;
    return strings.reduce((sum, text, i) => {
      const message = messages[i - offset];
      let tokens = encode(text).length;
      if (message?.generated) {
        const framed = promptStrings(template, system, [{ ...message, content: "" }]);
        tokens = Math.max(tokens, message.generated + encode(framed.at(-2)).length);
      }
      return sum + tokens;
    }, 0);
  };
}

/** UTF-8 bytes: at least as many as tokens for byte-level BPE and byte-fallback tokenizers. */
export function byteCount(text) {
  return new TextEncoder().encode(text).length;
}

/**
 * What fits: {messages, firstKept, promptTokens} for asking `question` after `turns`, or
 * {tooLong: promptTokens, limit} when even the question alone does not fit.
 * `turns` are [{user, assistant, index}] oldest first (index: the user message's place in the
 * conversation); `count(system, messages)` counts a prompt; `limit` = window - answer budget.
 * firstKept is the conversation index of the oldest message the model sees.
 */
export function fitConversation({ system, turns, question, questionIndex }, count, limit) {
  const alone = count(system, [question]);
  if (alone > limit) return { tooLong: alone, limit };
  let kept = [];
  let promptTokens = alone;
  let firstKept = questionIndex;
  for (let i = turns.length - 1; i >= 0; i--) {
    const candidate = [turns[i].user, turns[i].assistant, ...kept];
    const tokens = count(system, [...candidate, question]);
    if (tokens > limit) break;
    kept = candidate;
    promptTokens = tokens;
    firstKept = turns[i].index;
  }
  return { messages: [...kept, question], firstKept, promptTokens };
}

/** The prompt limit: the window less the answer's budget and a little slack. */
export function promptLimit(contextWindow, answerTokens) {
  return contextWindow - answerTokens - SLACK_TOKENS;
}

/**
 * A prompt counter for a checked model: web-llm's tokenizer over the checked tokenizer file
 * (`tokenizerFiles` maps file names to bytes), or, when it cannot be made, UTF-8 bytes (an upper
 * bound). Returns {count(system, messages), exact}.
 */
export async function loadCounter(conversationTemplate, tokenizerFiles) {
  const template = conversationTemplate?.roles?.user && conversationTemplate.roles.assistant
    ? conversationTemplate
    : { ...PLAIN_TEMPLATE, system_message: conversationTemplate?.system_message ?? "" };
  try {
    // A UMD file in a "type": "module" package: bundled as ESM it takes its browser-global branch
    // and defines globalThis.tokenizers (web-llm's rollup build turns it into CommonJS instead).
    const tokenizers = await import("@mlc-ai/web-tokenizers");
    const { Tokenizer } = tokenizers.Tokenizer ? tokenizers : globalThis.tokenizers;
    const json = tokenizerFiles["tokenizer.json"];
    const model = tokenizerFiles["tokenizer.model"];
    const tokenizer = json ? await Tokenizer.fromJSON(json) : model ? await Tokenizer.fromSentencePiece(model) : null;
    if (tokenizer) return { count: templateCounter(template, (text) => tokenizer.encode(text)), exact: true };
  } catch {
    // A tokenizer file web-tokenizers cannot read: counted in bytes below.
  }
  return { count: templateCounter(template, (text) => ({ length: byteCount(text) })), exact: false };
}
