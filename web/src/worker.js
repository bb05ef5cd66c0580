// The Web Worker that runs web-llm's engine, so downloads, shader compilation and decoding never
// block the page. `webslm check` runs this same worker with a logit recorder (check-worker.js).
import { WebWorkerMLCEngineHandler } from "@mlc-ai/web-llm";

export const handler = new WebWorkerMLCEngineHandler();
self.onmessage = (message) => handler.onmessage(message);
