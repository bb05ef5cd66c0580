// Conversations kept in this browser's IndexedDB, one list per model, so a chat survives a reload.
// A conversation: {id, modelId, title, messages: [{role, content, speed?}], updated (ms)}.

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
