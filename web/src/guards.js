// Refusals made before a model loads, each with the reason a user can act on.
//
// - version: the bundle embeds the web-llm version the toolchain lock pins; a model whose
//   AppConfig records another one was compiled for a different runtime ABI and may crash or
//   produce garbage, so it is refused.
// - WebGPU: web-llm needs a WebGPU adapter; without one nothing can run.
// - shader-f16: q4f16 libraries need the adapter feature `shader-f16` (the CPU SwiftShader
//   adapter and many older GPUs lack it); q4f32_1 builds run without it.

export const NO_WEBGPU =
  "This browser offers no WebGPU adapter, which the assistant needs to run the model on your GPU. " +
  "Use a recent Chrome or Edge (113+) with hardware acceleration on (chrome://gpu shows WebGPU " +
  "status), or enable WebGPU in your browser's settings; on Linux Chrome may need " +
  "--enable-unsafe-webgpu.";

/** Why a record built for another web-llm must not load here, or null when it may. */
export function versionProblem(record, builtWith) {
  const recorded = record.webslm?.webllm_version;
  if (!recorded) {
    return (
      `Refusing to load ${record.model_id}: its webllm-app-config.json does not record the ` +
      "web-llm version it was built for (no webslm.webllm_version); rebuild it with `invoke build`."
    );
  }
  if (recorded !== builtWith) {
    return (
      `Refusing to load ${record.model_id}: it was built for web-llm ${recorded}, but this app ` +
      `runs web-llm ${builtWith}. Rebuild the model with the current toolchain (invoke build) or ` +
      `rebuild the app with the toolchain lock that pins ${recorded}.`
    );
  }
  return null;
}

/** Why the adapter cannot run this record, or null. `gpu` is what probeWebGPU returned. */
export function featureProblem(record, gpu) {
  if (!gpu.available) {
    return `Cannot load ${record.model_id}: this browser offers no WebGPU adapter (see the note above).`;
  }
  for (const feature of record.required_features ?? []) {
    if (!gpu.features.has(feature)) {
      const quant = record.model_id.split("-").pop();
      return (
        `Refusing to load ${record.model_id}: this ${quant} model needs the WebGPU feature ` +
        `${feature}, which this GPU adapter (${gpu.description}) does not offer. Use a build ` +
        "without it (invoke build --quantization q4f32_1) or a browser and GPU with " +
        `${feature} support.`
      );
    }
  }
  return null;
}

/** {available, features: Set, description} of the browser's WebGPU adapter. */
export async function probeWebGPU(nav = globalThis.navigator) {
  const none = { available: false, features: new Set(), description: "none" };
  if (!nav?.gpu) return none;
  let adapter = null;
  try {
    adapter = await nav.gpu.requestAdapter();
  } catch {
    return none;
  }
  if (!adapter) return none;
  const info = adapter.info ?? {};
  const description = [info.vendor, info.architecture, info.description].filter(Boolean).join(" ") || "unnamed adapter";
  return { available: true, features: new Set(adapter.features), description };
}
