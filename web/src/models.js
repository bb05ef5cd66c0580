// Where the models come from and what their records say.
//
// The app reads one or more `webllm-app-config.json` files: named by `?config=URL` (repeatable)
// or listed in a models index (`?index=URL`, default /models/index.json, which `invoke serve`
// writes). A record pinned to a commit (`…/resolve/<40 hex>/`, what `invoke publish` writes) loads
// from exactly that URL, so files changed on a branch later never load. An unpinned record (a
// local dist) is relocated to the folder its AppConfig was read from: a dist folder is
// self-contained, so it loads from where it is served even when it was built for another base URL
// or port.

export const DEFAULT_INDEX = "/models/index.json";
const MB = 1024 * 1024;

/** {configs: [URL], index: URL|null, compare, a, b} from the page URL. */
export function pageOptions(href) {
  const url = new URL(href);
  const params = url.searchParams;
  const configs = params.getAll("config").map((c) => new URL(c, url).href);
  const index = configs.length ? null : new URL(params.get("index") || DEFAULT_INDEX, url).href;
  return {
    configs,
    index,
    compare: ["1", "true", "yes"].includes(params.get("compare") ?? ""),
    a: params.get("a"),
    b: params.get("b"),
  };
}

const PINNED = /\/resolve\/[0-9a-f]{40}\/$/;
const REF = /\/resolve\/([^/]+)\//;
const COMMIT = /^[0-9a-f]{40}$/;

/** Whether a model folder URL names a commit (`…/resolve/<40 hex>/`), not a branch. */
export function isPinned(modelUrl) {
  return typeof modelUrl === "string" && PINNED.test(modelUrl);
}

/** The branch or tag a `…/resolve/<ref>/…` URL reads from, or null (a commit, or no such part). */
export function movingRef(url) {
  const ref = typeof url === "string" ? REF.exec(url)?.[1] : null;
  return ref && !COMMIT.test(ref) ? decodeURIComponent(ref) : null;
}

/** Whether both the model folder and the model library of a record name a commit. */
export function recordPinned(record) {
  return isPinned(record.model) && typeof record.model_lib === "string" &&
    record.model_lib.startsWith(record.model);
}

/** An unpinned record moved to the folder its AppConfig was read from; a pinned one kept (pure). */
export function relocateRecord(record, configUrl) {
  const folder = new URL("./", configUrl).href;
  if (typeof record.model !== "string" || record.model === folder || recordPinned(record)) return record;
  const lib = record.model_lib;
  const relocatedLib = typeof lib === "string" && lib.startsWith(record.model)
    ? folder + lib.slice(record.model.length)
    : lib;
  return { ...record, model: folder, model_lib: relocatedLib };
}

/**
 * Why what runs may change under the user, or null: an AppConfig from another site read from a
 * branch (`…/resolve/main/…`) names the hashes the page checks against, so whoever can push to
 * that branch decides what runs. Models served by this page's own server are the user's own.
 */
export function movingRefNote(entry, pageUrl) {
  if (new URL(entry.configUrl).origin === new URL(pageUrl).origin) return null;
  const ref = movingRef(entry.configUrl);
  if (ref) {
    return `This model's config is read from the branch "${ref}" (${entry.configUrl}): whoever can ` +
      "change that branch decides which files the page checks and runs. For a fixed version, open " +
      "the share link `webslm publish` printed (its config URL names a commit).";
  }
  if (!recordPinned(entry.record)) {
    return `This model's files are not pinned to a commit (${entry.record.model_lib}): they may change ` +
      "after you check them. Publish it with `webslm publish` for commit-pinned URLs.";
  }
  return null;
}

/** The JSON at url, revalidated with the server (a rebuilt dist keeps its URLs); throws on HTTP errors. */
export async function fetchJson(url) {
  const response = await fetch(url, { cache: "no-cache" });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return await response.json();
}

/**
 * {entries: [{record, configUrl}], problems: [message]} from the page options.
 * `fetchJson(url)` returns parsed JSON or throws; one broken source does not hide the others.
 */
export async function loadCatalog(options, fetchJson) {
  const problems = [];
  let configs = options.configs;
  if (options.index) {
    try {
      const index = await fetchJson(options.index);
      configs = (index.models ?? []).map((c) => new URL(c, options.index).href);
    } catch (error) {
      problems.push(`Could not read the models index ${options.index}: ${error.message}`);
      configs = [];
    }
  }
  const entries = [];
  const seen = new Set();
  for (const configUrl of configs) {
    let appConfig;
    try {
      appConfig = await fetchJson(configUrl);
    } catch (error) {
      problems.push(`Could not read ${configUrl}: ${error.message}`);
      continue;
    }
    if (!Array.isArray(appConfig?.model_list)) {
      problems.push(`${configUrl} is not a WebLLM AppConfig (no model_list)`);
      continue;
    }
    for (const raw of appConfig.model_list) {
      if (seen.has(raw.model_id)) {
        problems.push(`${configUrl} repeats model id ${raw.model_id}; the first one is used`);
        continue;
      }
      seen.add(raw.model_id);
      entries.push({ record: relocateRecord(raw, configUrl), configUrl });
    }
  }
  return { entries, problems };
}

/** The system prompt the model was trained or built with (null when none). */
export function systemPromptOf(record) {
  const webslm = record.webslm ?? {};
  return webslm.finetune?.system_prompt ?? webslm.system_prompt ?? null;
}

/** webslm's own decoding defaults (webslm.webllm.DEFAULT_TEMPERATURE and DEFAULT_TOP_P, which
 * tests/test_web.py keeps equal to these), for a record that does not say. */
export const DEFAULT_SAMPLING = Object.freeze({ temperature: 0.7, top_p: 0.8 });

/** Decoding defaults the build recorded (the model's generation_config or webslm's). */
export function samplingOf(record) {
  const overrides = record.overrides ?? {};
  const recorded = (name) => (typeof overrides[name] === "number" ? overrides[name] : DEFAULT_SAMPLING[name]);
  return { temperature: recorded("temperature"), top_p: recorded("top_p") };
}

/** Bytes a first load downloads: the weight shards listed in ndarray-cache.json plus the library. */
export function downloadBytes(ndarrayCache, libraryBytes) {
  const shards = (ndarrayCache?.records ?? []).reduce((sum, shard) => sum + (shard.nbytes ?? 0), 0);
  return shards + libraryBytes;
}

/** "needs ~950 MB of GPU memory" from a record's vram_required_MB, or null when it records none. */
export function vramLabel(record) {
  const mb = record.vram_required_MB;
  if (typeof mb !== "number" || !(mb > 0)) return null;
  return `needs ~${formatMB(mb * MB)} of GPU memory`;
}

export function formatMB(bytes) {
  const mb = bytes / MB;
  return mb >= 10 ? `${Math.round(mb)} MB` : `${mb.toFixed(1)} MB`;
}

/** A short description: "tiny (q4f16_1, fine-tuned from Qwen/…)". */
export function describeRecord(record) {
  const base = record.webslm?.finetune?.base_model;
  return base ? `${record.model_id} — fine-tuned from ${base}` : record.model_id;
}
