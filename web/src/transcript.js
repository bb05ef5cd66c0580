// The conversation as the page shows it: one bubble per message, each with its actions (edit and
// delete a question; copy, regenerate or retry an answer), a failed answer with its headline, next
// step and technical detail in view, and a divider where the model's memory now begins.
import { formatSpeed } from "./chat.js";
import { renderMarkdown } from "./markdown.js";

function button(text, className, label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = `action ${className}`;
  b.textContent = text;
  if (label) b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

function actions(...buttons) {
  const row = document.createElement("div");
  row.className = "message-actions";
  row.append(...buttons);
  return row;
}

/** The note above the oldest message the model still sees. */
function memoryDivider(contextWindow) {
  const note = document.createElement("p");
  note.className = "memory-start";
  note.setAttribute("role", "note");
  const size = contextWindow ? ` (${contextWindow.toLocaleString("en-US")} tokens)` : "";
  note.textContent = `The model's memory begins here: the messages above no longer fit its context window${size}, ` +
    "so it does not see them.";
  return note;
}

/** A failed answer: what went wrong, what to do, Retry where it can help, the raw error below. */
function failureBody(body, failure, onRetry) {
  const headline = document.createElement("strong");
  headline.className = "failure-headline";
  headline.textContent = failure.headline;
  const summary = document.createElement("p");
  summary.className = "failure-summary";
  summary.textContent = failure.summary;
  const detail = document.createElement("details");
  detail.className = "failure-details";
  const title = document.createElement("summary");
  title.textContent = "Technical detail";
  const code = document.createElement("code");
  code.className = "failure-detail";
  code.textContent = failure.detail;
  detail.append(title, code);
  body.append(headline, summary, detail);
  return failure.retry ? [button("Retry", "retry-answer", "Retry this answer", onRetry)] : [];
}

/**
 * One message's bubble. `on` holds the actions: edit(i), remove(i), copy(i, button),
 * regenerate(i), retry(i); `last` says whether it is the conversation's last message.
 */
export function messageBubble(message, i, last, on) {
  const bubble = document.createElement("div");
  bubble.className = `bubble ${message.role}`;
  bubble.dataset.index = String(i);
  const body = document.createElement("div");
  body.className = "body";
  bubble.append(body);
  if (message.role === "user") {
    body.textContent = message.content;
    bubble.append(actions(
      button("Edit", "edit", "Edit this question and ask again", () => on.edit(i)),
      button("Delete", "delete-turn", "Delete this question and its answer", () => on.remove(i)),
    ));
  } else if (message.failure) {
    bubble.classList.add("failed");
    bubble.append(actions(...failureBody(body, message.failure, () => on.retry(i))));
  } else {
    renderMarkdown(body, message.content);
    if (message.speed) bubble.append(speedLine(message.speed));
    const copy = button("Copy", "copy-answer", "Copy this answer as Markdown", () => on.copy(i, copy));
    const tools = [copy];
    if (last) tools.push(button("Regenerate", "regenerate", "Answer this question again", () => on.regenerate(i)));
    bubble.append(actions(...tools));
  }
  return bubble;
}

export function speedLine(speed) {
  const line = document.createElement("p");
  line.className = "speed";
  line.textContent = formatSpeed(speed);
  return line;
}

/**
 * Every message of a conversation into `container`, the memory divider before message
 * conversation.memory.start when earlier messages were left out.
 */
export function renderMessages(container, conversation, on) {
  const { messages, memory } = conversation;
  const bubbles = [];
  messages.forEach((message, i) => {
    if (memory && memory.start > 0 && memory.start === i) bubbles.push(memoryDivider(memory.window));
    bubbles.push(messageBubble(message, i, i === messages.length - 1, on));
  });
  container.replaceChildren(...bubbles);
}

/** An editor in place of a question's text: Send asks it again (replacing what followed), Cancel restores it. */
export function editQuestion(bubble, text, onSend, onCancel) {
  const body = bubble.querySelector(".body");
  const editor = document.createElement("form");
  editor.className = "edit-question";
  const area = document.createElement("textarea");
  area.value = text;
  area.rows = Math.min(8, text.split("\n").length + 1);
  area.setAttribute("aria-label", "Edit your question");
  const send = document.createElement("button");
  send.type = "submit";
  send.textContent = "Send";
  editor.append(area, actions(send, button("Cancel", "cancel-edit secondary", null, onCancel)));
  editor.addEventListener("submit", (event) => {
    event.preventDefault();
    if (area.value.trim()) onSend(area.value.trim());
  });
  body.replaceChildren(editor);
  bubble.querySelector(":scope > .message-actions")?.remove();
  area.focus();
}
