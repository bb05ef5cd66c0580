// Records what a web-llm engine computed at each decoding step, for `webslm check`.

export const RECORDING_REQUEST = "webslm-take-recording";

/** A web-llm LogitProcessor that only observes: raw logits per step and the token picked. */
export class LogitRecorder {
  constructor() {
    this.steps = [];
    this.tokens = [];
  }

  processLogits(logits) {
    this.steps.push(Float32Array.from(logits));
    return logits;
  }

  processSampledToken(token) {
    this.tokens.push(token);
  }

  resetState() {}

  /** {tokens, vocab, logits: one Float32Array of steps × vocab}; the recorder starts over. */
  take() {
    const vocab = this.steps[0]?.length ?? 0;
    const logits = new Float32Array(this.steps.length * vocab);
    this.steps.forEach((step, i) => logits.set(step, i * vocab));
    const recording = { tokens: this.tokens, vocab, logits };
    this.steps = [];
    this.tokens = [];
    return recording;
  }
}

/** Asks the check worker for its recording (over a private channel, beside web-llm's messages). */
export function takeRecording(worker) {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = (event) => resolve(event.data);
    worker.postMessage({ kind: RECORDING_REQUEST }, [channel.port2]);
  });
}

/** Base64 of a Float32Array's little-endian bytes (what Python reads with numpy). */
export function floatsToBase64(floats) {
  const bytes = new Uint8Array(floats.buffer, floats.byteOffset, floats.byteLength);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}
