// A TEST STAND-IN for the engine inside web-llm's Web Worker: the app's own worker
// (web/src/worker.js: web-llm 0.2.79's WebWorkerMLCEngineHandler, the real worker protocol the
// page talks to) with its MLCEngine swapped for a scripted one, because no model can generate on
// this machine's SwiftShader adapter. The page, its checks and web-llm's worker client all run for
// real; only token generation is scripted. Replies depend on the last question:
//   "markdown" -> Markdown with a list, emphasis, a code block and HTML that must be sanitized
//   "long"     -> 80 numbered lines, slowly, to test following the stream
//   "slow"     -> a few tokens 600 ms apart (time for a test to act while it streams)
//   "fail"     -> an error before any token
//   "flaky"    -> an error the first time a question is asked, an answer after that
//   "table"    -> Markdown with a GFM table and a JavaScript code block
//   otherwise  -> "You asked: <question> (turn N)."
// Model ids containing "broken" fail to load with a raw TypeError, as a crashing engine would.
// Every request is logged to the console as "scripted-engine request <JSON>".
import { handler } from "../../web/src/worker.js";

const MARKDOWN = [
  "Here is a **plan** with *emphasis*:\n\n",
  "1. First step\n2. Second step\n\n",
  "```python\nprint('hello')\n```\n\n",
  "<img src=x onerror=\"self.__xss = 1\"><script>self.__xss = 2</script>",
  "<a href=\"javascript:alert(1)\">bad link</a> done.",
];
const TABLE = [
  "| Model | Size |\n|---|---|\n| tiny | 0.1 MB |\n| base | 950 MB |\n\n",
  "```javascript\nconst answer = 42; // the answer\n```\n",
];
const SPEED = { prefill_tokens_per_s: 321.5, decode_tokens_per_s: 45.5 };

const asked = new Set();

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function tokensFor(request) {
  const last = [...request.messages].reverse().find((m) => m.role === "user")?.content ?? "";
  const turn = request.messages.filter((m) => m.role === "user").length;
  if (request.max_tokens && request.ignore_eos) return { tokens: Array(request.max_tokens).fill("tok "), delay: 0 };
  if (/flaky/i.test(last) && !asked.has(last)) {
    asked.add(last);
    return { error: new TypeError("Cannot read properties of undefined (reading 'logits')") };
  }
  if (/fail/i.test(last)) return { error: new TypeError("Cannot read properties of undefined (reading 'logits')") };
  if (/markdown/i.test(last)) return { tokens: MARKDOWN, delay: 20 };
  if (/table/i.test(last)) return { tokens: TABLE, delay: 20 };
  if (/long/i.test(last)) return { tokens: Array.from({ length: 80 }, (_, i) => `Line ${i + 1} of a long answer.\n\n`), delay: 60 };
  if (/slow/i.test(last)) return { tokens: ["Slow ", "answer ", "in ", "parts."], delay: 600 };
  return { tokens: ["You ", "asked: ", last, ` (turn ${turn}).`], delay: 15 };
}

class ScriptedEngine {
  constructor(post) {
    this.post = post;
    this.interrupted = false;
  }

  setInitProgressCallback() {}
  setLogitProcessorRegistry() {}
  setAppConfig(appConfig) { this.appConfig = appConfig; }
  setLogLevel() {}

  async reload(modelId) {
    for (const progress of [0.25, 0.75, 1]) {
      this.post({ kind: "initProgressCallback", uuid: "", content: { progress, timeElapsed: 0, text: `Scripted engine loading ${modelId}` } });
      await sleep(20);
    }
    if (String(modelId).includes("broken")) throw new TypeError("Cannot read properties of undefined (reading 'buffer')");
  }

  async chatCompletion(request) {
    console.log(`scripted-engine request ${JSON.stringify(request)}`);
    const script = tokensFor(request);
    if (script.error) throw script.error;
    this.interrupted = false;
    const engine = this;
    return (async function* () {
      let sent = 0;
      for (const token of script.tokens) {
        if (engine.interrupted) break;
        if (script.delay) await sleep(script.delay);
        sent += 1;
        yield { choices: [{ index: 0, delta: { role: "assistant", content: token }, finish_reason: null }] };
      }
      // As web-llm 0.2.79: completion_tokens counts decode steps, one fewer than the tokens sent.
      const steps = Math.max(0, sent - 1);
      yield { choices: [], usage: { prompt_tokens: 12, completion_tokens: steps, total_tokens: 12 + steps, extra: SPEED } };
    })();
  }

  interruptGenerate() { this.interrupted = true; }
  async resetChat() {}
  async unload() {}
  async runtimeStatsText() { return "scripted"; }
  async getMessage() { return ""; }
  async getMaxStorageBufferBindingSize() { return 1 << 30; }
  async getGPUVendor() { return "scripted"; }
}

handler.engine = new ScriptedEngine((message) => handler.postMessage(message));
