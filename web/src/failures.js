// What went wrong, in words a user can act on. Engines and browsers throw errors such as
// "TypeError: Cannot read properties of undefined" or "Failed to fetch"; the page shows a headline,
// a sentence that says which step failed and what to do next, and the raw message as a technical
// detail. `retry` says whether trying the same thing again can help: it cannot when the files
// themselves are wrong (only a rebuild and a reload can), so the page then offers no Retry.
// Every failure is {headline, summary, detail, retry}.

const GPU_TROUBLE = /out of memory|OOM|device (was )?lost|GPUDevice|DeviceLost|createBuffer/i;

const CAUSES = [
  {
    test: /records no digests|has no integrity hashes/,
    headline: "Built by an older webslm",
    words: "it was built by an older webslm that did not record the hashes of all its files, so they " +
      "cannot be checked. Rebuild it with the current webslm (invoke build), then reload this page.",
    retry: false,
  },
  {
    test: /QuotaExceeded|quota/i,
    headline: "No room to store the model",
    words: "the browser has no room left to store the model. Free some disk space, or clear other sites' " +
      "data or this page's (Settings: Clear all data), then press Retry.",
    retry: true,
  },
  {
    test: GPU_TROUBLE,
    headline: "The GPU ran out of memory",
    words: "the GPU ran out of memory or stopped responding. Close other tabs that use the GPU or pick a " +
      "smaller model, then press Retry.",
    retry: true,
  },
  {
    test: /Failed to fetch|NetworkError|Cannot fetch|could not download|HTTP \d{3}|Load failed|network/i,
    headline: "A download failed",
    words: "a file could not be downloaded. Check that the server (invoke serve) is still running or that " +
      "you are online, then press Retry.",
    retry: true,
  },
];

const LIBRARY = {
  test: /WebAssembly|CompileError|LinkError|wasm|instantiate/i,
  headline: "The model library would not start",
  words: "the model library would not start in this browser: it is not a working WebGPU library for " +
    "this app's web-llm. Rebuild the model (invoke build), then reload this page.",
  retry: false,
};

/** What failed when the cause is not recognised, by the step the load had reached. */
const STEPS = {
  check: {
    headline: "The files could not be checked",
    words: "its files could not be checked. Press Retry; if it fails again, reload the page.",
    retry: true,
  },
  library: LIBRARY,
  engine: {
    headline: "The engine stopped",
    words: "the engine stopped with an unexpected error while loading the weights onto the GPU. Press " +
      "Retry; if it fails again, reload the page or rebuild the model.",
    retry: true,
  },
};

function rawMessage(error) {
  if (error instanceof Error) return `${error.name}: ${error.message}`;
  return String(error?.message ?? error);
}

/**
 * The failed load of modelId. `step` is how far the load got: "check" (hashing files), "library"
 * (the engine had reported no progress yet: web-llm reports none before the library is
 * instantiated and the GPU found), or "engine" (the engine was loading the weights).
 */
export function describeLoadFailure(modelId, error, step) {
  const detail = rawMessage(error);
  const cause = CAUSES.find((c) => c.test.test(detail)) ?? (LIBRARY.test.test(detail) ? LIBRARY : STEPS[step]);
  return { headline: cause.headline, summary: `Could not load ${modelId}: ${cause.words}`, detail, retry: cause.retry };
}

const ANSWER_CAUSES = [
  {
    test: /ContextWindowSizeExceeded|exceed context window/i,
    headline: "The conversation no longer fits the model's memory",
    summary: "No answer: the conversation is longer than the model's memory. Delete earlier turns or start a " +
      "new chat.",
    retry: false,
  },
  {
    test: GPU_TROUBLE,
    headline: "The GPU stopped",
    summary: "No answer: the GPU ran out of memory or stopped responding. Reload the page, close other tabs " +
      "that use the GPU, and load the model again.",
    retry: false,
  },
];

const ANSWER_OTHER = {
  headline: "The model stopped with an error",
  summary: "No answer: the model stopped with an error. Press Retry; if it fails again, reload the page.",
  retry: true,
};

/** An answer that failed part-way. */
export function describeAnswerFailure(error) {
  const detail = rawMessage(error);
  const { headline, summary, retry } = ANSWER_CAUSES.find((c) => c.test.test(detail)) ?? ANSWER_OTHER;
  return { headline, summary, detail, retry };
}

/** A question that does not fit the model's memory even alone (see context.js). */
export function questionTooLong(tokens, limit) {
  return {
    headline: "Your message is too long for this model",
    summary: `No answer: your message takes ${tokens} tokens, and at most ${limit} fit in this model's memory ` +
      "with room for the answer. Shorten it (Edit), or lower Max answer tokens in Settings.",
    detail: `prompt ${tokens} tokens > limit ${limit} (context window less the answer's budget)`,
    retry: false,
  };
}
