// The page: pick a model (or two, to compare), check it, load it into a Web Worker engine, chat.
//
// Everything a model needs is checked before its engine starts (guards.js: web-llm version,
// WebGPU, shader-f16; integrity.js: SRI hashes of the library, configs, tokenizer and every weight
// shard). The AppConfig goes to the engine constructor (CreateWebWorkerMLCEngine's
// engineConfig.appConfig), never to reload(). Conversations are kept per model in IndexedDB,
// settings per model in localStorage; every request is cut to fit the model's context window
// (context.js), counted with the model's own tokenizer.
import { CreateWebWorkerMLCEngine, hasModelInCache } from "@mlc-ai/web-llm";

import { BENCHMARK, benchmarkRequest, chatRequest, formatSpeed, streamAnswer } from "./chat.js";
import { copyText } from "./clipboard.js";
import {
  contextWindowOf, defaultAnswerTokens, fitConversation, loadCounter, promptLimit,
} from "./context.js";
import {
  conversationMarkdown, conversationsSize, deleteAllConversations, deleteConversation, listConversations,
  newConversation, saveConversation,
} from "./conversations.js";
import { describeAnswerFailure, describeLoadFailure, questionTooLong } from "./failures.js";
import { featureProblem, NO_WEBGPU, probeWebGPU, versionProblem } from "./guards.js";
import { browserStore, integrityRefusal, verifyRecord, verifyShards, WEIGHTS_MANIFEST } from "./integrity.js";
import { streamingView } from "./markdown.js";
import {
  describeRecord, downloadBytes, fetchJson, formatMB, loadCatalog, movingRefNote, pageOptions, vramLabel,
} from "./models.js";
import { buildDefaults, clearSettings, loadSettings, mergeSettings, saveSettings } from "./settings.js";
import { editQuestion, renderMessages, speedLine } from "./transcript.js";
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
const WEBLLM_CACHES = ["webllm/model", "webllm/wasm", "webllm/config"];

const $ = (id) => document.getElementById(id);
const ui = {
  notice: $("notice"), modelA: $("model-a"), modelB: $("model-b"), modelBLabel: $("model-b-label"),
  compare: $("compare"), load: $("load"), downloadSize: $("download-size"), panes: $("panes"),
  settings: $("settings"), systemPrompt: $("system-prompt"), temperature: $("temperature"), topP: $("top-p"),
  maxTokens: $("max-tokens"), budget: $("sentence-budget"), resetSettings: $("reset-settings"),
  form: $("ask"), question: $("question"), send: $("send"),
  stop: $("stop"), template: $("pane-template"), benchmark: $("benchmark"),
  benchmarkResult: $("benchmark-result"), benchmarkCopy: $("benchmark-copy"),
  clearData: $("clear-data"), dataSizes: $("data-sizes"),
  confirm: $("confirm"), confirmText: $("confirm-text"),
};

const app = {
  gpu: null, entries: [], panes: [], sizes: new Map(), generating: false,
  shown: { a: "", b: "", compare: false }, defaults: null,
};

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

/** Runs one piece of generation work at a time (an answer, a regeneration, the benchmark). */
async function exclusive(work) {
  if (app.generating) return;
  app.generating = true;
  updateControls();
  try {
    await work();
  } finally {
    app.generating = false;
    updateControls();
  }
}

/** The bytes of a checked file of a record, by its URL (from verifyRecord's result). */
function checkedBytes(checked, url) {
  return checked.verified.find((v) => v.target.url === url)?.bytes ?? null;
}

/** One model's column: its checks, its engine and its conversation. */
class Pane {
  constructor(entry, title) {
    this.record = entry.record;
    this.engine = null;
    this.worker = null;
    this.counter = null;
    this.contextWindow = null;
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
    this.jump = find(".jump-latest");
    this.history = find(".history");
    const note = movingRefNote(entry, location.href);
    find(".pin-note").hidden = !note;
    find(".pin-note").textContent = note ?? "";
    this.history.addEventListener("change", () => this.openConversation(this.history.value));
    find(".new-chat").addEventListener("click", () => this.startConversation());
    find(".delete-chat").addEventListener("click", () => this.deleteCurrent());
    find(".export-chat").addEventListener("click", () => this.exportCurrent());
    find(".retry").addEventListener("click", () => this.load());
    this.jump.addEventListener("click", () => {
      this.follow = true;
      this.scrollToEnd();
      this.transcript.focus();
    });
    this.transcript.addEventListener("scroll", () => {
      const { scrollTop, clientHeight, scrollHeight } = this.transcript;
      this.follow = scrollTop + clientHeight >= scrollHeight - FOLLOW_SLACK_PX;
      this.jump.hidden = this.follow;
    });
    this.actions = {
      edit: (i) => this.startEdit(i),
      remove: (i) => this.deleteTurn(i),
      copy: (i, button) => this.copyAnswer(i, button),
      regenerate: (i) => exclusive(() => this.answerAt(i - 1, settings())),
      retry: (i) => exclusive(() => this.answerAt(i - 1, settings())),
    };
  }

  setState(state, message = "") {
    this.el.dataset.state = state;
    this.status.textContent = message;
    this.status.classList.toggle("error", state === "refused" || state === "error");
    if (state !== "error") this.failure.hidden = true;
    updateControls();
  }

  /** Shows why the load failed at `step` (see describeLoadFailure): headline, next step, Retry if it can help. */
  failLoad(error, step) {
    const failure = describeLoadFailure(this.record.model_id, error, step);
    this.progress.hidden = true;
    this.setState("error", failure.summary);
    this.failure.hidden = false;
    this.el.querySelector(".failure-headline").textContent = failure.headline;
    this.el.querySelector(".retry").hidden = !failure.retry;
    this.el.querySelector(".failure-detail").textContent = failure.detail;
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
    await this.prepareCounting(checked);
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
    this.renderTranscript();
    showAnswerBudget();
    ui.question.focus();
  }

  /** The context window and a prompt counter from the checked chat config and tokenizer files. */
  async prepareCounting(checked) {
    const folder = this.record.model;
    const chatConfig = JSON.parse(new TextDecoder().decode(checkedBytes(checked, new URL("mlc-chat-config.json", folder).href)));
    const tokenizerFiles = Object.fromEntries(Object.keys(this.record.integrity.tokenizer)
      .map((name) => [name, checkedBytes(checked, new URL(name, folder).href)]));
    this.contextWindow = contextWindowOf(this.record, chatConfig);
    this.defaultSystem = chatConfig.conv_template.system_message ?? "";
    this.counter = await loadCounter(chatConfig.conv_template, tokenizerFiles);
    this.el.dataset.contextWindow = String(this.contextWindow);
    this.el.dataset.exactCount = this.counter.exact ? "yes" : "no";
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
    await this.fillHistory();
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

  /** Saves the conversation as a Markdown file. */
  exportCurrent() {
    const markdown = conversationMarkdown(this.conversation, this.record.model_id, new Date());
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([markdown], { type: "text/markdown" }));
    link.download = `${this.conversation.title.replace(/[^\p{L}\p{N} _-]+/gu, "").trim() || "conversation"}.md`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }

  /** Saves the conversation (or forgets it once its last turn is deleted) and refreshes the list. */
  async persist() {
    if (this.conversation.messages.length) await saveConversation(this.conversation);
    else await deleteConversation(this.conversation.id);
    await this.fillHistory();
  }

  renderTranscript() {
    if (!this.conversation.messages.length) {
      this.transcript.replaceChildren(this.emptyState());
    } else {
      renderMessages(this.transcript, this.conversation, this.actions);
    }
    this.follow = true;
    this.scrollToEnd();
    updateControls();
  }

  emptyState() {
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
    return empty;
  }

  scrollToEnd() {
    if (this.follow) this.transcript.scrollTop = this.transcript.scrollHeight;
    this.jump.hidden = this.follow;
  }

  startEdit(i) {
    if (app.generating) return;
    const bubble = this.transcript.querySelector(`.bubble[data-index="${i}"]`);
    editQuestion(bubble, this.conversation.messages[i].content,
      (text) => exclusive(() => this.resend(i, text)), () => this.renderTranscript());
    updateControls();
  }

  /** An edited question: it replaces the old one, and the answers after it go. */
  async resend(i, text) {
    this.conversation.messages.splice(i, Infinity, { role: "user", content: text });
    this.conversation.memory = null;
    await this.answerAt(i, settings());
  }

  /** Deletes the question at i and its answer. */
  async deleteTurn(i) {
    if (app.generating) return;
    const next = this.conversation.messages[i + 1];
    this.conversation.messages.splice(i, next?.role === "assistant" ? 2 : 1);
    this.conversation.memory = null;
    this.renderTranscript();
    await this.persist();
  }

  copyAnswer(i, button) {
    return copyText(this.conversation.messages[i].content, button, "Copy", button.closest(".bubble").querySelector(".body"));
  }

  /** The turns before message `end` the model can see again: questions with a good answer. */
  turnsBefore(end) {
    const turns = [];
    const messages = this.conversation.messages;
    for (let i = 0; i + 1 < end; i++) {
      const [user, answer] = [messages[i], messages[i + 1]];
      if (user.role === "user" && answer.role === "assistant" && !answer.failure) {
        turns.push({ user, assistant: { role: "assistant", content: answer.content, generated: answer.generated }, index: i });
        i += 1;
      }
    }
    return turns;
  }

  async ask(question, shared) {
    this.conversation.messages.push({ role: "user", content: question });
    await this.answerAt(this.conversation.messages.length - 1, shared);
  }

  /**
   * Answers the question at index `at` (its answer, if any, is replaced; what follows stays),
   * sending the system prompt, as many of the latest turns as fit the context window, and the
   * question. A failed answer stays in the conversation with its question, to retry.
   */
  async answerAt(at, shared) {
    const messages = this.conversation.messages;
    const question = messages[at];
    const answerTokens = shared.maxTokens ?? defaultAnswerTokens(this.contextWindow);
    const limit = promptLimit(this.contextWindow, answerTokens);
    const fit = fitConversation({ system: shared.systemPrompt, turns: this.turnsBefore(at), question, questionIndex: at },
      this.counter.count, limit);
    const replaced = messages[at + 1]?.role === "assistant" ? 1 : 0;
    if (fit.tooLong) {
      messages.splice(at + 1, replaced, { role: "assistant", content: "", failure: questionTooLong(fit.tooLong, limit) });
      this.finishAnswer(messages[at + 1].failure.headline);
      await this.persist();
      return;
    }
    this.conversation.memory = { start: fit.firstKept, window: this.contextWindow };
    messages.splice(at + 1, replaced, { role: "assistant", content: "" });
    this.follow = true;
    this.renderTranscript();
    const bubble = this.transcript.querySelector(`.bubble[data-index="${at + 1}"]`);
    this.el.dataset.promptEstimate = String(fit.promptTokens);
    this.setState("generating", "Answering…");
    const view = streamingView(bubble.querySelector(".body"), () => this.scrollToEnd());
    const request = chatRequest(fit.messages, { ...shared, maxTokens: answerTokens });
    try {
      const { text, speed } = await streamAnswer(this.engine, request, shared.budget, (t) => view.show(t));
      await view.finish(text);
      messages[at + 1] = { role: "assistant", content: text, speed, generated: speed?.completionTokens };
      if (speed) bubble.append(speedLine(speed));
      this.el.dataset.promptTokens = String(speed?.promptTokens ?? "");
      this.finishAnswer("");
    } catch (error) {
      const failure = describeAnswerFailure(error);
      messages[at + 1] = { role: "assistant", content: "", failure };
      this.finishAnswer(failure.headline);
    }
    await this.persist();
  }

  /** Back to ready after an answer, showing the conversation with each message's actions; a
   * failure's headline is announced in the status, its next step and detail are on the answer. */
  finishAnswer(problem) {
    this.setState("ready", problem ? `${problem} (see the answer below).` : "");
    if (problem) this.status.classList.add("error");
    this.renderTranscript();
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

/** The settings of the selected models: saved for the first one, else the build's defaults. */
function applySettings(entries) {
  app.defaults = buildDefaults(entries.map((e) => e.record));
  showSettings(loadSettings(localStorage, entries[0].record.model_id, app.defaults));
}

function showSettings(values) {
  ui.systemPrompt.value = values.systemPrompt;
  ui.temperature.value = values.temperature;
  ui.topP.value = values.top_p;
  ui.maxTokens.value = values.maxTokens ?? "";
  ui.budget.value = values.budget ?? "";
}

/** What an empty field means once a model is loaded: the automatic answer budget, the template's system prompt. */
function showAnswerBudget() {
  const windows = app.panes.map((p) => p.contextWindow).filter(Boolean);
  ui.maxTokens.placeholder = windows.length ? `auto (${defaultAnswerTokens(Math.min(...windows))})` : "auto";
  const system = app.panes.find((p) => p.defaultSystem)?.defaultSystem;
  ui.systemPrompt.placeholder = system ? `(empty: the model's own, "${system}")` : "(none)";
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
  const library = await caches.match(record.model_lib, { cacheName: "webllm/wasm" });
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
  if (entries.length) applySettings(entries);
  showAnswerBudget();
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
  ui.clearData.disabled = app.generating || busy;
  for (const pane of app.panes) {
    const empty = !pane.conversation.messages.length;
    for (const button of pane.el.querySelectorAll(".example")) button.disabled = !pane.engine || app.generating;
    for (const button of pane.el.querySelectorAll(".action")) {
      const needsEngine = !button.matches(".copy-answer, .delete-turn, .cancel-edit");
      button.disabled = app.generating || (needsEngine && !pane.engine);
    }
    pane.el.querySelector(".new-chat").disabled = app.generating;
    pane.el.querySelector(".delete-chat").disabled = app.generating || empty;
    pane.el.querySelector(".export-chat").disabled = empty;
    pane.history.disabled = app.generating;
  }
}

/**
 * The settings as the form holds them, kept for each selected model. A temperature or top p left
 * empty or out of range is the build's default (mergeSettings), never NaN in a request.
 */
function settings() {
  const whole = (input) => (input.value.trim() === "" ? null : Number.parseInt(input.value, 10));
  const form = mergeSettings(app.defaults, {
    temperature: Number.parseFloat(ui.temperature.value),
    top_p: Number.parseFloat(ui.topP.value),
    maxTokens: whole(ui.maxTokens),
    budget: whole(ui.budget),
  });
  return { ...form, systemPrompt: ui.systemPrompt.value.trim() || null };
}

function keepSettings() {
  const values = settings();
  saveSettings(localStorage, app.panes.map((p) => p.record.model_id), { ...values, systemPrompt: ui.systemPrompt.value });
}

async function ask(event) {
  event.preventDefault();
  if (app.generating) return;
  const question = ui.question.value.trim();
  const ready = app.panes.filter((p) => p.engine);
  if (!question || !ready.length) return;
  ui.question.value = "";
  ui.question.focus();
  const shared = settings();
  await exclusive(() => Promise.all(ready.map((pane) => pane.ask(question, shared))));
}

async function benchmark() {
  await exclusive(async () => {
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
  });
}

/** Bytes of the models web-llm keeps in Cache Storage. */
async function cachedModelsSize() {
  let bytes = 0;
  for (const name of WEBLLM_CACHES) {
    if (!(await caches.has(name))) continue;
    const cache = await caches.open(name);
    for (const request of await cache.keys()) bytes += (await (await cache.match(request)).blob()).size;
  }
  return bytes;
}

async function showDataSizes() {
  const [chats, models] = await Promise.all([conversationsSize(), cachedModelsSize()]);
  ui.dataSizes.textContent = `This browser holds ${chats.count} saved ${chats.count === 1 ? "chat" : "chats"} ` +
    `(${formatMB(chats.bytes)}) and ${formatMB(models)} of downloaded models.`;
  return { chats, models };
}

/** Deletes every chat, downloaded model and saved setting of this page, after asking. */
async function clearAllData() {
  const { chats, models } = await showDataSizes();
  const ok = await confirmed(`Delete all data of this page from this browser: ${chats.count} saved ` +
    `${chats.count === 1 ? "chat" : "chats"} (${formatMB(chats.bytes)}), ${formatMB(models)} of downloaded ` +
    "models and your settings? Models download again on the next Load.");
  if (!ok) return;
  for (const pane of app.panes) pane.dispose();
  app.panes = [];
  await deleteAllConversations();
  await Promise.all(WEBLLM_CACHES.map((name) => caches.delete(name)));
  clearSettings(localStorage);
  await renderPanes();
  await showDataSizes();
}

function optionLabel(entry) {
  const size = app.sizes.get(entry.record.model_id);
  const parts = [entry.record.model_id];
  if (size != null) parts.push(`${formatMB(size)} download`);
  const vram = vramLabel(entry.record);
  if (vram) parts.push(vram);
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

function listen() {
  for (const control of [ui.modelA, ui.modelB, ui.compare]) control.addEventListener("change", selectionChanged);
  ui.load.addEventListener("click", () => loadPanes(app.panes.filter((p) => p.el.dataset.state === "idle")));
  ui.form.addEventListener("submit", ask);
  ui.stop.addEventListener("click", () => app.panes.forEach((p) => p.stop()));
  ui.benchmark.addEventListener("click", benchmark);
  ui.benchmarkCopy.addEventListener("click",
    () => copyText(ui.benchmarkResult.textContent, ui.benchmarkCopy, "Copy figures", ui.benchmarkResult));
  for (const input of [ui.systemPrompt, ui.temperature, ui.topP, ui.maxTokens, ui.budget]) {
    input.addEventListener("change", keepSettings);
  }
  ui.resetSettings.addEventListener("click", () => {
    showSettings(app.defaults);
    keepSettings();
  });
  ui.settings.addEventListener("toggle", () => { if (ui.settings.open) showDataSizes(); });
  ui.clearData.addEventListener("click", clearAllData);
  ui.question.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) return;
    event.preventDefault();
    if (!app.generating) ask(event);
  });
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
  listen();
  if (app.entries.length) await renderPanes();
  updateControls();
  document.body.dataset.ready = "yes";
}

boot();
