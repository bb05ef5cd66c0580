// The Web Worker that runs web-llm's engine, so downloads, shader compilation and decoding never
// block the page.
import { WebWorkerMLCEngineHandler } from "@mlc-ai/web-llm";

const handler = new WebWorkerMLCEngineHandler();
self.onmessage = (message) => handler.onmessage(message);
