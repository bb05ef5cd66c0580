// The engine worker of `webslm check`: the app's engine (web-llm's WebWorkerMLCEngineHandler, as in
// worker.js) plus a logit recorder. web-llm hands every step's raw logits (before penalties and
// temperature) and the token it then picked to a registered logit processor; the recorder keeps
// them and returns nothing changed, so decoding is exactly what the app does.
import { WebWorkerMLCEngineHandler } from "@mlc-ai/web-llm";

import { LogitRecorder, RECORDING_REQUEST } from "./logits.js";

const handler = new WebWorkerMLCEngineHandler();
const recorder = new LogitRecorder();
handler.engine.setLogitProcessorRegistry({ get: () => recorder }); // whichever model is loaded

self.onmessage = (message) => {
  if (message.data?.kind === RECORDING_REQUEST) {
    const recording = recorder.take();
    message.ports[0].postMessage(recording, [recording.logits.buffer]);
  } else {
    handler.onmessage(message);
  }
};
