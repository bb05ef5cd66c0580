// The page: pick a model (or two, to compare), check it, load it into a Web Worker engine, chat.
//
// Everything a model needs is checked before its engine starts (guards.js: web-llm version,
// WebGPU, shader-f16; integrity.js: SRI hashes of the library, configs, tokenizer and every weight
// shard). The AppConfig goes to the engine constructor (CreateWebWorkerMLCEngine's
// engineConfig.appConfig), never to reload(). Conversations are kept per model in IndexedDB.
import { CreateWebWorkerMLCEngine, hasModelInCache } from "@mlc-ai/web-llm";

import { BENCHMARK, benchmarkRequest, chatRequest, formatSpeed, streamAnswer } from "./chat.js";
import { deleteConversation, listConversations, newConversation, saveConversation } from "./conversations.js";
import { describeAnswerFailure, describeLoadFailure } from "./failures.js";
import { featureProblem, NO_WEBGPU, probeWebGPU, versionProblem } from "./guards.js";
import { browserStore, integrityRefusal, verifyRecord, verifyShards, WEIGHTS_MANIFEST } from "./integrity.js";
import { renderMarkdown } from "./markdown.js";
import {
  describeRecord, downloadBytes, fetchJson, formatMB, loadCatalog, pageOptions, samplingOf, systemPromptOf,
} from "./models.js";
import { BUILT_WEBLLM_VERSION } from "./version.js";

const EXAMPLES = [
  "What can you help me with?",
  "Give me three tips for writing a clear email, as a list.",
  "Explain what a hash function is in two sentences.",
];
const SERVE_HINT = "Build one (invoke build) and serve it: invoke serve dist (the same as " +
  "webslm serve dist or webslm serve --dist dist), or open this page with ?config=<URL of a " +
  "webllm-app-config.json>.";
const FOLLOW_SLACK_PX = 24;

const $ = (id) => document.getElementById(id);
const ui = {
  notice: $("notice"), modelA: $("model-a"), modelB: $("model-b"), modelBLabel: $("model-b-label"),
  compare: $("compare"), load: $("load"), downloadSize: $("download-size"), panes: $("panes"),
  systemPrompt: $("system-prompt"), temperature: $("temperature"), topP: $("top-p"),
  budget: $("sentence-budget"), form: $("ask"), question: $("question"), send: $("send"),
  stop: $("stop"), template: $("pane-template"), benchmark: $("benchmark"),
  benchmarkResult: $("benchmark-result"), benchmarkCopy: $("benchmark-copy"),
  confirm: $("confirm"), confirmText: $("confirm-text"),
};

const app = { gpu: null, entries: [], panes: [], sizes: new Map(), generating: false, shown: { a: "", b: "", compare: false } };

function showNotice(lines) {
  ui.notice.hidden = lines.length === 0;
  ui.notice.textContent = lines.join("\n");
}

/** Asks a yes/no question in the page's dialog; resolves true on Continue. */
function confirmed(text) {
  ui.confirmText.textContent = text;
  ui.confirm.returnValue = "";
  ui.confirm.showModal();
  return new Promise((resolve) => {
    ui.confirm.addEventListener("close", () => resolve(ui.confirm.returnValue === "ok"), { once: true });
  });
}

/** Why a record cannot load in this browser, or null. */
function refusalOf(record) {
  return versionProblem(record, BUILT_WEBLLM_VERSION) ?? featureProblem(record, app.gpu);
}

/** One model's column: its checks, its engine and its conversation. */
class Pane {
  constructor(entry, title) {
    this.record = entry.record;
    this.engine = null;
    this.worker = null;
    this.conversation = newConversation(this.record.model_id);
    this.follow = true;
    this.el = ui.template.content.firstElementChild.cloneNode(true);
    this.el.dataset.modelId = this.record.model_id;
    const find = (selector) => this.el.querySelector(selector);
    find(".pane-title").textContent = title;
    this.status = find(".status");
    this.failure = find(".failure");
    this.progress = find(".progress");
    this.progress.setAttribute("aria-label", `Loading ${this.record.model_id}`);
    this.transcript = find(".transcript");
    this.history = find(".history");
    this.history.addEventListener("change", () => this.openConversation(this.history.value));
    find(".new-chat").addEventListener("click", () => this.startConversation());
    find(".delete-chat").addEventListener("click", () => this.deleteCurrent());
    find(".retry").addEventListener("click", () => this.load());
    this.transcript.addEventListener("scroll", () => {
      const { scrollTop, clientHeight, scrollHeight } = this.transcript;
      this.follow = scrollTop + clientHeight >= scrollHeight - FOLLOW_SLACK_PX;
    });
  }

  setState(state, message = "") {
    this.el.dataset.state = state;
    this.status.textContent = message;
    this.status.classList.toggle("error", state === "refused" || state === "error");
    if (state !== "error") this.failure.hidden = true;
    updateControls();
  }

  /** Shows, in words, why the load failed at `step` (see describeLoadFailure), the raw error below. */
  failLoad(error, step) {
    const { summary, detail } = describeLoadFailure(this.record.model_id, error, step);
    this.progress.hidden = true;
    this.setState("error", summary);
    this.failure.hidden = false;
    this.el.querySelector(".failure-detail").textContent = detail;
  }

  /** Checks every file against the build's hashes (weights shard by shard), then starts the engine. */
  async load() {
    this.failure.hidden = true;
    this.setState("checking", "Checking the model's files against the hashes its build recorded…");
    const store = browserStore();
    let checked;
    try {
      checked = await verifyRecord(this.record, store);
    } catch (error) {
      this.failLoad(error, "check");
      return;
    }
    if (checked.failures.length) {
      this.setState("refused", integrityRefusal(this.record, checked.failures));
      return;
    }
    for (const { target, bytes } of checked.verified) await store.keep(target.cache, target.url, bytes);
    const manifest = checked.verified.find((v) => v.target.url.endsWith(WEIGHTS_MANIFEST)).bytes;
    this.showProgress(0, "Downloading and checking the weights…");
    let weights;
    try {
      weights = await verifyShards(this.record, manifest, store, (p) => this.showWeightProgress(p));
    } catch (error) {
      this.failLoad(error, "check");
      return;
    }
    if (weights.failures.length) {
      this.progress.hidden = true;
      this.setState("refused", integrityRefusal(this.record, weights.failures));
      return;
    }
    this.el.dataset.checkSeconds = weights.seconds.toFixed(3);
    this.el.dataset.hashSeconds = weights.hashSeconds.toFixed(3);
    const checkedText = `All ${formatMB(weights.bytes)} of weights match their recorded hashes ` +
      `(checked in ${weights.seconds.toFixed(1)} s).`;
    this.setState("loading", `${checkedText} Starting the engine…`);
    this.worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
    const appConfig = { model_list: [this.record], useIndexedDBCache: false };
    let step = "library";
    try {
      this.engine = await CreateWebWorkerMLCEngine(this.worker, this.record.model_id, {
        appConfig,
        initProgressCallback: (report) => {
          step = "engine";
          this.showProgress(report.progress, report.text);
        },
      });
    } catch (error) {
      this.worker.terminate();
      this.worker = null;
      this.failLoad(error, step);
      return;
    }
    this.progress.hidden = true;
    this.setState("ready", `Ready. ${checkedText} Works offline from now on.`);
    ui.question.focus();
  }

  showWeightProgress(p) {
    const fraction = p.totalBytes ? (p.arrivedBytes + p.checkedBytes) / (2 * p.totalBytes) : 1;
    this.showProgress(fraction, `Weights: ${p.checkedShards} of ${p.shards} shards checked ` +
      `(${formatMB(p.checkedBytes)} of ${formatMB(p.totalBytes)}; ${formatMB(p.arrivedBytes)} downloaded)`);
  }

  showProgress(fraction, text) {
    const percent = Math.max(0, Math.min(100, Math.round(fraction * 100)));
    this.progress.hidden = false;
    this.progress.setAttribute("aria-valuenow", String(percent));
    this.progress.setAttribute("aria-valuetext", text);
    this.progress.querySelector(".bar").style.width = `${percent}%`;
    this.progress.querySelector(".progress-text").textContent = text;
  }

  /** The latest saved conversation with this model, and the list of all of them. */
  async restore() {
    const saved = await listConversations(this.record.model_id);
    if (saved.length) this.conversation = saved[0];
    this.renderTranscript();
    await this.fillHistory(saved);
  }

  async fillHistory(saved = null) {
    const list = saved ?? (await listConversations(this.record.model_id));
    const current = list.some((c) => c.id === this.conversation.id) ? [] : [this.conversation];
    this.history.replaceChildren(...[...current, ...list].map((c) => new Option(c.title, c.id)));
    this.history.value = this.conversation.id;
    updateControls();
  }

  async openConversation(id) {
    const found = (await listConversations(this.record.model_id)).find((c) => c.id === id);
    if (!found) return;
    this.conversation = found;
    this.renderTranscript();
  }

  async startConversation() {
    this.conversation = newConversation(this.record.model_id);
    this.renderTranscript();
    await this.fillHistory();
    if (!ui.question.disabled) ui.question.focus();
  }

  async deleteCurrent() {
    if (!this.conversation.messages.length) return;
    if (!(await confirmed(`Delete the conversation "${this.conversation.title}" from this browser?`))) return;
    await deleteConversation(this.conversation.id);
    const [latest] = await listConversations(this.record.model_id);
    this.conversation = latest ?? newConversation(this.record.model_id);
    this.renderTranscript();
    await this.fillHistory();
  }

  renderTranscript() {
    this.transcript.replaceChildren();
    if (!this.conversation.messages.length) {
      const empty = ui.template.content.querySelector(".empty-state").cloneNode(true);
      const list = empty.querySelector(".examples");
      for (const text of EXAMPLES) {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "example";
        button.textContent = text;
        button.disabled = !this.engine;
        button.addEventListener("click", () => {
          ui.question.value = text;
          ui.question.focus();
        });
        item.append(button);
        list.append(item);
      }
      this.transcript.append(empty);
      return;
    }
    for (const message of this.conversation.messages) this.addBubble(message.role, message.content, message.speed);
    this.follow = true;
    this.scrollToEnd();
  }

  addBubble(role, text, speed = null) {
    this.transcript.querySelector(".empty-state")?.remove();
    const bubble = document.createElement("div");
    bubble.className = `bubble ${role}`;
    const body = document.createElement("div");
    body.className = "body";
    bubble.append(body);
    if (role === "assistant") renderMarkdown(body, text);
    else body.textContent = text;
    if (speed) this.addSpeed(bubble, speed);
    this.transcript.append(bubble);
    this.scrollToEnd();
    return bubble;
  }

  addSpeed(bubble, speed) {
    const line = document.createElement("p");
    line.className = "speed";
    line.textContent = formatSpeed(speed);
    bubble.append(line);
  }

  scrollToEnd() {
    if (this.follow) this.transcript.scrollTop = this.transcript.scrollHeight;
  }

  /** Streams one answer into the transcript; a failed answer leaves nothing in the history. */
  async answer(question, settings) {
    const history = this.conversation.messages.map(({ role, content }) => ({ role, content }));
    const request = chatRequest([...history, { role: "user", content: question }], settings);
    this.follow = true;
    const asked = this.addBubble("user", question);
    const bubble = this.addBubble("assistant", "");
    const body = bubble.querySelector(".body");
    this.setState("generating", "Answering…");
    try {
      const { text, speed } = await streamAnswer(this.engine, request, settings.budget, (t) => {
        renderMarkdown(body, t);
        this.scrollToEnd();
      });
      if (speed) this.addSpeed(bubble, speed);
      this.conversation.messages.push({ role: "user", content: question }, { role: "assistant", content: text, speed });
      this.setState("ready", "");
      await saveConversation(this.conversation);
      await this.fillHistory();
    } catch (error) {
      const failure = describeAnswerFailure(error);
      bubble.remove();
      asked.classList.add("failed");
      this.setState("ready", failure.summary);
      this.status.classList.add("error");
      this.status.title = failure.detail;
    }
  }

  /** The fixed benchmark on this pane's engine; not part of the conversation. */
  async benchmark() {
    this.setState("generating", "Running the speed benchmark…");
    try {
      const { speed } = await streamAnswer(this.engine, benchmarkRequest(), null, () => {});
      this.setState("ready", "");
      return speed;
    } catch (error) {
      this.setState("ready", describeAnswerFailure(error).summary);
      return null;
    }
  }

  stop() {
    if (this.el.dataset.state === "generating") this.engine.interruptGenerate();
  }

  dispose() {
    this.worker?.terminate();
  }
}

function selectedEntries() {
  const byId = new Map(app.entries.map((e) => [e.record.model_id, e]));
  const chosen = [byId.get(ui.modelA.value)];
  if (ui.compare.checked) chosen.push(byId.get(ui.modelB.value));
  return chosen.filter(Boolean);
}

/** Defaults from the build: sampling of the first model, the training system prompt. */
function applyDefaults(entries) {
  const records = entries.map((e) => e.record);
  const tuned = records.find((r) => r.webslm?.finetune) ?? records[0];
  const sampling = samplingOf(records[0]);
  ui.systemPrompt.value = systemPromptOf(tuned) ?? "";
  ui.temperature.value = sampling.temperature;
  ui.topP.value = sampling.top_p;
}

/** Bytes a first load of a record downloads (weight shards plus library), or null if unknown. */
async function downloadSizeOf(record) {
  try {
    const shards = await fetchJson(new URL(WEIGHTS_MANIFEST, record.model).href);
    const head = await fetch(record.model_lib, { method: "HEAD" });
    return downloadBytes(shards, Number(head.headers.get("Content-Length") ?? 0));
  } catch {
    return null;
  }
}

async function isCached(record) {
  const library = await (await caches.open("webllm/wasm")).match(record.model_lib);
  return Boolean(library) && (await hasModelInCache(record.model_id, { model_list: [record] }));
}

/** The download hint for the panes still to download (a cached model needs no download). */
function showDownloadSize(uncached) {
  const bytes = uncached.reduce((sum, pane) => sum + (app.sizes.get(pane.record.model_id) ?? 0), 0);
  ui.downloadSize.hidden = !uncached.length;
  ui.downloadSize.textContent = uncached.length
    ? `First load downloads ~${formatMB(bytes)} once; after that it works offline.`
    : "";
}

/** Rebuilds the panes for the current selection; a cached model is loaded straight away. */
async function renderPanes() {
  for (const pane of app.panes) pane.dispose();
  ui.panes.replaceChildren();
  const entries = selectedEntries();
  const titles = entries.length > 1 ? ["A: ", "B: "] : [""];
  app.panes = entries.map((entry, i) => new Pane(entry, titles[i] + describeRecord(entry.record)));
  app.shown = { a: ui.modelA.value, b: ui.modelB.value, compare: ui.compare.checked };
  ui.panes.classList.toggle("compare", app.panes.length > 1);
  for (const pane of app.panes) {
    ui.panes.append(pane.el);
    const refusal = refusalOf(pane.record);
    pane.setState(refusal ? "refused" : "idle", refusal ?? "Press Load to start.");
  }
  applyDefaults(entries);
  await Promise.all(app.panes.map((p) => p.restore()));
  const idle = app.panes.filter((p) => p.el.dataset.state === "idle");
  const cached = await Promise.all(idle.map((p) => isCached(p.record).catch(() => false)));
  showDownloadSize(idle.filter((_, i) => !cached[i]));
  const fromCache = idle.filter((_, i) => cached[i]);
  for (const pane of fromCache) pane.setState("idle", "In this browser's cache: loading it offline…");
  await loadPanes(fromCache);
}

async function loadPanes(panes) {
  if (!panes.length) return;
  await Promise.all(panes.map((p) => p.load()));
  updateControls();
  showDownloadSize(app.panes.filter((p) => p.el.dataset.state === "idle"));
  if (app.panes.some((p) => p.engine)) ui.question.focus();
}

/** Enables what can be used now: Load for idle panes, asking and examples for loaded ones. */
function updateControls() {
  const ready = app.panes.some((p) => p.engine);
  const busy = app.panes.some((p) => ["checking", "loading"].includes(p.el.dataset.state));
  ui.load.disabled = busy || !app.panes.some((p) => p.el.dataset.state === "idle");
  ui.question.disabled = !ready;
  ui.send.disabled = !ready || app.generating;
  ui.stop.disabled = !app.generating;
  ui.benchmark.disabled = !ready || app.generating;
  for (const pane of app.panes) {
    for (const button of pane.el.querySelectorAll(".example")) button.disabled = !pane.engine || app.generating;
    pane.el.querySelector(".new-chat").disabled = app.generating;
    pane.el.querySelector(".delete-chat").disabled = app.generating || !pane.conversation.messages.length;
    pane.history.disabled = app.generating;
  }
}

function settings() {
  const budget = Number.parseInt(ui.budget.value, 10);
  return {
    systemPrompt: ui.systemPrompt.value.trim() || null,
    temperature: Number.parseFloat(ui.temperature.value),
    top_p: Number.parseFloat(ui.topP.value),
    budget: Number.isFinite(budget) && budget > 0 ? budget : null,
  };
}

async function ask(event) {
  event.preventDefault();
  if (app.generating) return;
  const question = ui.question.value.trim();
  const ready = app.panes.filter((p) => p.engine);
  if (!question || !ready.length) return;
  ui.question.value = "";
  app.generating = true;
  updateControls();
  ui.question.focus();
  const shared = settings();
  await Promise.all(ready.map((pane) => pane.answer(question, shared)));
  app.generating = false;
  updateControls();
}

async function benchmark() {
  if (app.generating) return;
  app.generating = true;
  updateControls();
  ui.benchmarkResult.hidden = false;
  ui.benchmarkResult.textContent = "Running…";
  const lines = [`webslm speed benchmark: ${BENCHMARK.maxTokens} tokens, web-llm ${BUILT_WEBLLM_VERSION}, ` +
    `GPU ${app.gpu.description}`];
  for (const pane of app.panes.filter((p) => p.engine)) {
    const speed = await pane.benchmark();
    lines.push(speed
      ? `${pane.record.model_id}: ${formatSpeed(speed)} (prompt ${speed.promptTokens} tokens, ${speed.completionTokens} generated)`
      : `${pane.record.model_id}: failed`);
  }
  ui.benchmarkResult.textContent = lines.join("\n");
  ui.benchmarkCopy.hidden = false;
  app.generating = false;
  updateControls();
}

function optionLabel(entry) {
  const size = app.sizes.get(entry.record.model_id);
  const parts = [entry.record.model_id];
  if (size != null) parts.push(formatMB(size));
  if (refusalOf(entry.record)) parts.push("won't run in this browser");
  return parts.join(" · ");
}

function fillSelect(select, entries, chosen) {
  select.replaceChildren(...entries.map((e) => {
    const option = new Option(optionLabel(e), e.record.model_id);
    option.dataset.refused = refusalOf(e.record) ? "yes" : "no";
    return option;
  }));
  const runnable = entries.filter((e) => !refusalOf(e.record));
  const pick = entries.find((e) => e.record.model_id === chosen) ?? runnable[0] ?? entries[0];
  if (pick) select.value = pick.record.model_id;
}

/** Changing model or compare mode: ask first when a loaded model or a conversation would go. */
async function selectionChanged() {
  const inUse = app.panes.filter((p) => p.engine || p.conversation.messages.length);
  if (inUse.length) {
    const names = inUse.map((p) => p.record.model_id).join(" and ");
    const ok = await confirmed(`Switch models? ${names} will be unloaded and the conversation closed ` +
      "(it stays saved in this browser).");
    if (!ok) {
      ui.modelA.value = app.shown.a;
      ui.modelB.value = app.shown.b;
      ui.compare.checked = app.shown.compare;
      ui.modelBLabel.hidden = !ui.compare.checked;
      return;
    }
  }
  ui.modelBLabel.hidden = !ui.compare.checked;
  await renderPanes();
}

async function boot() {
  const options = pageOptions(location.href);
  const [gpu, catalog] = await Promise.all([probeWebGPU(), loadCatalog(options, fetchJson)]);
  app.gpu = gpu;
  app.entries = catalog.entries;
  const notices = [...catalog.problems];
  if (!gpu.available) notices.unshift(NO_WEBGPU);
  if (!app.entries.length) notices.push(`No models found. ${SERVE_HINT}`);
  showNotice(notices);
  document.body.dataset.webgpu = gpu.available ? "yes" : "no";
  const sizes = await Promise.all(app.entries.map((e) => downloadSizeOf(e.record)));
  app.entries.forEach((e, i) => app.sizes.set(e.record.model_id, sizes[i]));
  fillSelect(ui.modelA, app.entries, options.a);
  const otherB = app.entries.find((e) => e.record.model_id !== ui.modelA.value && !refusalOf(e.record));
  fillSelect(ui.modelB, app.entries, options.b ?? otherB?.record.model_id);
  ui.compare.checked = options.compare && app.entries.length > 0;
  ui.modelBLabel.hidden = !ui.compare.checked;
  for (const control of [ui.modelA, ui.modelB, ui.compare]) control.addEventListener("change", selectionChanged);
  ui.load.addEventListener("click", () => loadPanes(app.panes.filter((p) => p.el.dataset.state === "idle")));
  ui.form.addEventListener("submit", ask);
  ui.stop.addEventListener("click", () => app.panes.forEach((p) => p.stop()));
  ui.benchmark.addEventListener("click", benchmark);
  ui.benchmarkCopy.addEventListener("click", async () => {
    await navigator.clipboard.writeText(ui.benchmarkResult.textContent).catch(() => {});
    ui.benchmarkCopy.textContent = "Copied";
  });
  ui.question.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) return;
    event.preventDefault();
    if (!app.generating) ask(event);
  });
  if (app.entries.length) await renderPanes();
  updateControls();
  document.body.dataset.ready = "yes";
}

boot();
