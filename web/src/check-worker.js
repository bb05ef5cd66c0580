// The engine worker of `webslm check`: the app's worker (worker.js, imported as it is) plus a
// logit recorder. web-llm hands every step's raw logits (before penalties and temperature) and
// the token it then picked to a registered logit processor; the recorder keeps copies and
// changes nothing, so decoding is exactly what the app does.
import { LogitRecorder, RECORDING_REQUEST } from "./logits.js";
import { handler } from "./worker.js";

const recorder = new LogitRecorder();
handler.engine.setLogitProcessorRegistry({ get: () => recorder }); // whichever model is loaded
const engineMessages = self.onmessage;

self.onmessage = (message) => {
  if (message.data?.kind === RECORDING_REQUEST) {
    const recording = recorder.take();
    message.ports[0].postMessage(recording, [recording.logits.buffer]);
  } else {
    engineMessages(message);
  }
};
