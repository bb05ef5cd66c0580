// Conversations kept in this browser's IndexedDB, one list per model, so a chat survives a reload.
// A conversation: {id, modelId, title, messages, updated (ms), memory}. A message is
// {role: "user"|"assistant", content, speed?, generated?, failure?}: `generated` is the tokens
// web-llm generated for an answer, `failure` ({headline, summary, detail, retry}) marks an answer
// that failed, whose question stays so it can be retried. memory ({start, window}, or null once
// turns are edited or deleted) is where the last request began: `start` the index of the oldest
// message the model saw (the turns before it no longer fit its memory), `window` its context window.

const DB_NAME = "webslm";
const STORE = "conversations";

let opened = null;

function database() {
  opened ??= new Promise((resolve, reject) => {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => {
      const store = request.result.createObjectStore(STORE, { keyPath: "id" });
      store.createIndex("modelId", "modelId");
    };
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  return opened;
}

async function run(mode, work) {
  const db = await database();
  return await new Promise((resolve, reject) => {
    const transaction = db.transaction(STORE, mode);
    const request = work(transaction.objectStore(STORE));
    transaction.oncomplete = () => resolve(request?.result);
    transaction.onerror = () => reject(transaction.error);
  });
}

/** A new, empty conversation with a model. */
export function newConversation(modelId) {
  return { id: crypto.randomUUID(), modelId, title: "New chat", messages: [], updated: Date.now() };
}

/** The saved conversations with a model, newest first. */
export async function listConversations(modelId) {
  const found = await run("readonly", (store) => store.index("modelId").getAll(modelId));
  return found.sort((a, b) => b.updated - a.updated);
}

/** Saves a conversation that has at least one message (an empty one is not worth keeping). */
export async function saveConversation(conversation) {
  if (!conversation.messages.length) return;
  const first = conversation.messages.find((m) => m.role === "user")?.content ?? "New chat";
  conversation.title = first.length > 60 ? `${first.slice(0, 57)}…` : first;
  conversation.updated = Date.now();
  await run("readwrite", (store) => store.put(conversation));
}

export async function deleteConversation(id) {
  await run("readwrite", (store) => store.delete(id));
}

/** {count, bytes} of every saved conversation (bytes: their JSON, about what the browser stores). */
export async function conversationsSize() {
  const all = await run("readonly", (store) => store.getAll());
  return { count: all.length, bytes: all.reduce((sum, c) => sum + new Blob([JSON.stringify(c)]).size, 0) };
}

/** Removes every saved conversation of every model. */
export async function deleteAllConversations() {
  await run("readwrite", (store) => store.clear());
}

/** The conversation as a Markdown document: a title, then each turn under who said it. */
export function conversationMarkdown(conversation, modelName, date) {
  const lines = [`# ${conversation.title}`, "", `A conversation with ${modelName}, exported ${date.toISOString()}.`];
  for (const message of conversation.messages) {
    const who = message.role === "user" ? "You" : modelName;
    const text = message.failure ? `*No answer: ${message.failure.headline}.*` : message.content;
    lines.push("", `## ${who}`, "", text);
  }
  return lines.join("\n") + "\n";
}
