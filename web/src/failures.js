// What went wrong, in words a user can act on. Engines and browsers throw errors such as
// "TypeError: Cannot read properties of undefined" or "Failed to fetch"; the page shows a sentence
// that says which step failed and what to try, and keeps the raw message as a technical detail.

const GPU_TROUBLE = /out of memory|OOM|device (was )?lost|GPUDevice|DeviceLost|createBuffer/i;

const CAUSES = [
  {
    test: /QuotaExceeded|quota/i,
    words: "the browser has no room left to store the model. Free some disk space or clear other sites' " +
      "data, then press Retry.",
  },
  {
    test: GPU_TROUBLE,
    words: "the GPU ran out of memory or stopped responding. Close other tabs that use the GPU or pick a " +
      "smaller model, then press Retry.",
  },
  {
    test: /Failed to fetch|NetworkError|Cannot fetch|could not download|HTTP \d{3}|Load failed|network/i,
    words: "a file could not be downloaded. Check that the server (invoke serve) is still running or that " +
      "you are online, then press Retry.",
  },
];

const LIBRARY_WORDS = "the model library would not start in this browser: it is not a working WebGPU library " +
  "for this app's web-llm. Rebuild the model (invoke build), then press Retry.";
const LIBRARY = /WebAssembly|CompileError|LinkError|wasm|instantiate/i;

/** What failed when the cause is not recognised, by the step the load had reached. */
const STEPS = {
  check: "its files could not be checked. Press Retry; if it fails again, reload the page.",
  library: LIBRARY_WORDS,
  engine: "the engine stopped with an unexpected error while loading the weights onto the GPU. Press Retry; " +
    "if it fails again, reload the page or rebuild the model.",
};

function rawMessage(error) {
  if (error instanceof Error) return `${error.name}: ${error.message}`;
  return String(error?.message ?? error);
}

/**
 * {summary, detail} for a failed load of modelId: a sentence, and the raw error for reference.
 * `step` is how far the load got: "check" (hashing files), "library" (the engine had reported no
 * progress yet: web-llm reports none before the library is instantiated and the GPU found), or
 * "engine" (the engine was loading the weights).
 */
export function describeLoadFailure(modelId, error, step) {
  const detail = rawMessage(error);
  const cause = CAUSES.find((c) => c.test.test(detail));
  const why = cause ? cause.words : LIBRARY.test(detail) ? LIBRARY_WORDS : STEPS[step];
  return { summary: `Could not load ${modelId}: ${why}`, detail };
}

/** {summary, detail} for an answer that failed part-way. */
export function describeAnswerFailure(error) {
  const detail = rawMessage(error);
  const summary = GPU_TROUBLE.test(detail)
    ? "No answer: the GPU ran out of memory or stopped responding. Start a new chat or reload the model."
    : "No answer: the model stopped with an error. Ask again; if it keeps failing, reload the page.";
  return { summary, detail };
}
