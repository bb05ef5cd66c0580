// The page: pick a model (or two, to compare), check it, load it into a Web Worker engine, chat.
//
// Everything a model needs is checked before its engine starts (guards.js: web-llm version,
// WebGPU, shader-f16; integrity.js: SRI hashes). The AppConfig goes to the engine constructor
// (CreateWebWorkerMLCEngine's engineConfig.appConfig), never to reload().
import { CreateWebWorkerMLCEngine, hasModelInCache } from "@mlc-ai/web-llm";

import { chatRequest, streamAnswer } from "./chat.js";
import { featureProblem, NO_WEBGPU, probeWebGPU, versionProblem } from "./guards.js";
import { browserStore, integrityRefusal, verifyRecord } from "./integrity.js";
import {
  describeRecord, downloadBytes, formatMB, loadCatalog, pageOptions, samplingOf, systemPromptOf,
} from "./models.js";
import { BUILT_WEBLLM_VERSION } from "./version.js";

const EXAMPLES = [
  "What can you help me with?",
  "Explain your answer to my last question in simpler words.",
  "Summarize the key points in three sentences.",
];

const $ = (id) => document.getElementById(id);
const ui = {
  notice: $("notice"), modelA: $("model-a"), modelB: $("model-b"), modelBLabel: $("model-b-label"),
  compare: $("compare"), load: $("load"), downloadSize: $("download-size"), panes: $("panes"),
  systemPrompt: $("system-prompt"), temperature: $("temperature"), topP: $("top-p"),
  budget: $("sentence-budget"), form: $("ask"), question: $("question"), send: $("send"),
  stop: $("stop"), template: $("pane-template"),
};

const app = { gpu: null, entries: [], panes: [] };

async function fetchJson(url) {
  const response = await fetch(url, { cache: "no-cache" });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return await response.json();
}

function showNotice(lines) {
  ui.notice.hidden = lines.length === 0;
  ui.notice.textContent = lines.join("\n");
}

/** One model's column: its checks, its engine and its conversation. */
class Pane {
  constructor(entry, title) {
    this.record = entry.record;
    this.engine = null;
    this.worker = null;
    this.messages = [];
    this.el = ui.template.content.firstElementChild.cloneNode(true);
    this.el.dataset.modelId = this.record.model_id;
    this.el.querySelector(".pane-title").textContent = title;
    this.status = this.el.querySelector(".status");
    this.progress = this.el.querySelector(".progress");
    this.transcript = this.el.querySelector(".transcript");
    const examples = this.el.querySelector(".examples");
    for (const text of EXAMPLES) {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = text;
      button.addEventListener("click", () => {
        ui.question.value = text;
        ui.question.focus();
      });
      item.append(button);
      examples.append(item);
    }
  }

  setState(state, message = "") {
    this.el.dataset.state = state;
    this.status.textContent = message;
    this.status.classList.toggle("error", state === "refused" || state === "error");
  }

  /** The reason this model cannot load here, shown before anything is downloaded. */
  refusal() {
    return versionProblem(this.record, BUILT_WEBLLM_VERSION) ?? featureProblem(this.record, app.gpu);
  }

  async load() {
    this.setState("checking", "Checking the model's files against the hashes its build recorded…");
    const store = browserStore();
    let checked;
    try {
      checked = await verifyRecord(this.record, store);
    } catch (error) {
      this.setState("error", `Could not check ${this.record.model_id}: ${error.message}`);
      return;
    }
    if (checked.failures.length) {
      this.setState("refused", integrityRefusal(this.record, checked.failures));
      return;
    }
    for (const { target, bytes } of checked.verified) await store.keep(target.cache, target.url, bytes);
    this.setState("loading", "Loading…");
    this.progress.hidden = false;
    this.worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
    const appConfig = { model_list: [this.record], useIndexedDBCache: false };
    try {
      this.engine = await CreateWebWorkerMLCEngine(this.worker, this.record.model_id, {
        appConfig,
        initProgressCallback: (report) => this.showProgress(report),
      });
      this.progress.hidden = true;
      this.setState("ready", "Ready. Works offline from now on.");
    } catch (error) {
      this.worker.terminate();
      this.worker = null;
      this.progress.hidden = true;
      this.setState("error", `The engine could not load ${this.record.model_id}: ${error.message ?? error}`);
    }
  }

  showProgress(report) {
    this.progress.querySelector(".bar").style.width = `${Math.round(report.progress * 100)}%`;
    this.progress.querySelector(".progress-text").textContent = report.text;
  }

  addBubble(role, text) {
    this.el.querySelector(".empty-state")?.remove();
    const bubble = document.createElement("div");
    bubble.className = `bubble ${role}`;
    bubble.textContent = text;
    this.transcript.append(bubble);
    this.transcript.scrollTop = this.transcript.scrollHeight;
    return bubble;
  }

  /** Streams one answer into the transcript; the sentence budget cuts and stops it. */
  async answer(question, settings) {
    const request = chatRequest([...this.messages, { role: "user", content: question }], settings);
    this.messages.push({ role: "user", content: question });
    this.addBubble("user", question);
    const bubble = this.addBubble("assistant", "");
    this.setState("generating", "Answering…");
    let text = "";
    try {
      text = await streamAnswer(this.engine, request, settings.budget, (t) => {
        bubble.textContent = t;
      });
      this.setState("ready", "");
    } catch (error) {
      this.setState("error", `Generation failed: ${error.message ?? error}`);
    }
    this.messages.push({ role: "assistant", content: text });
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

async function showDownloadSize(panes) {
  ui.downloadSize.textContent = "";
  if (!panes.length) return;
  let bytes = 0;
  let cached = true;
  try {
    for (const pane of panes) {
      const record = pane.record;
      cached &&= await hasModelInCache(record.model_id, { model_list: [record] });
      const shards = await fetchJson(new URL("ndarray-cache.json", record.model).href);
      const head = await fetch(record.model_lib, { method: "HEAD" });
      bytes += downloadBytes(shards, Number(head.headers.get("Content-Length") ?? 0));
    }
  } catch {
    return;
  }
  ui.downloadSize.textContent = cached
    ? "Already in this browser's cache: loads offline."
    : `First load downloads ~${formatMB(bytes)} once; after that it works offline.`;
}

/** Rebuilds the panes for the current selection; resolves once the download size is shown. */
async function renderPanes() {
  for (const pane of app.panes) pane.dispose();
  ui.panes.replaceChildren();
  const entries = selectedEntries();
  const titles = entries.length > 1 ? ["A: ", "B: "] : [""];
  app.panes = entries.map((entry, i) => new Pane(entry, titles[i] + describeRecord(entry.record)));
  ui.panes.classList.toggle("compare", app.panes.length > 1);
  for (const pane of app.panes) {
    ui.panes.append(pane.el);
    const refusal = pane.refusal();
    pane.setState(refusal ? "refused" : "idle", refusal ?? "Press Load to start.");
  }
  applyDefaults(entries);
  ui.load.disabled = !app.panes.some((p) => p.el.dataset.state === "idle");
  setAsking(false);
  await showDownloadSize(app.panes.filter((p) => p.el.dataset.state === "idle"));
}

function setAsking(generating) {
  const ready = app.panes.some((p) => p.engine);
  ui.question.disabled = !ready;
  ui.send.disabled = !ready || generating;
  ui.stop.disabled = !generating;
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
  const question = ui.question.value.trim();
  const ready = app.panes.filter((p) => p.engine);
  if (!question || !ready.length) return;
  ui.question.value = "";
  setAsking(true);
  const shared = settings();
  await Promise.all(ready.map((pane) => pane.answer(question, shared)));
  setAsking(false);
}

function fillSelect(select, entries, chosen) {
  select.replaceChildren(...entries.map((e) => new Option(describeRecord(e.record), e.record.model_id)));
  if (chosen && entries.some((e) => e.record.model_id === chosen)) select.value = chosen;
}

async function boot() {
  const options = pageOptions(location.href);
  const [gpu, catalog] = await Promise.all([probeWebGPU(), loadCatalog(options, fetchJson)]);
  app.gpu = gpu;
  app.entries = catalog.entries;
  const notices = [...catalog.problems];
  if (!gpu.available) notices.unshift(NO_WEBGPU);
  if (!app.entries.length) {
    notices.push("No models found. Build one (invoke build) and serve it (invoke serve dist), " +
      "or open this page with ?config=<URL of a webllm-app-config.json>.");
  }
  showNotice(notices);
  document.body.dataset.webgpu = gpu.available ? "yes" : "no";
  fillSelect(ui.modelA, app.entries, options.a);
  fillSelect(ui.modelB, app.entries, options.b ?? app.entries[1]?.record.model_id);
  ui.compare.checked = options.compare && app.entries.length > 0;
  ui.modelBLabel.hidden = !ui.compare.checked;
  for (const control of [ui.modelA, ui.modelB]) control.addEventListener("change", renderPanes);
  ui.compare.addEventListener("change", () => {
    ui.modelBLabel.hidden = !ui.compare.checked;
    renderPanes();
  });
  ui.load.addEventListener("click", async () => {
    ui.load.disabled = true;
    await Promise.all(app.panes.filter((p) => p.el.dataset.state === "idle").map((p) => p.load()));
    setAsking(false);
  });
  ui.form.addEventListener("submit", ask);
  ui.stop.addEventListener("click", () => app.panes.forEach((p) => p.stop()));
  ui.question.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) ask(event);
  });
  if (app.entries.length) await renderPanes();
  else ui.load.disabled = true;
  document.body.dataset.ready = "yes";
}

boot();
