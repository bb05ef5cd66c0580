// Answers rendered as Markdown (marked) and sanitized (DOMPurify) before they reach the DOM: a model
// can write any HTML, and none of it may run or load anything. Images are dropped (the page works
// offline and must not call out to hosts an answer names); links open in a new tab without opener.
import DOMPurify from "dompurify";
import { marked } from "marked";

const PURIFY = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["img", "picture", "video", "audio", "source", "iframe", "form", "input", "button", "style", "svg", "math"],
  FORBID_ATTR: ["style", "srcset"],
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

/** Safe HTML for a Markdown answer. */
export function markdownHtml(text) {
  return DOMPurify.sanitize(marked.parse(text, { gfm: true, breaks: true, async: false }), PURIFY);
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Select and copy (Ctrl+C)";
    const range = document.createRange();
    range.selectNodeContents(button.parentElement.querySelector("code") ?? button.parentElement);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
  }
  setTimeout(() => { button.textContent = "Copy"; }, 2000);
}

/** A "Copy" button on each code block of a rendered answer. */
function addCopyButtons(target) {
  for (const pre of target.querySelectorAll("pre")) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy-code";
    button.textContent = "Copy";
    button.setAttribute("aria-label", "Copy this code");
    button.addEventListener("click", () => copyText(pre.querySelector("code")?.textContent ?? pre.textContent, button));
    pre.prepend(button);
  }
}

/** Shows a Markdown answer in `target`. */
export function renderMarkdown(target, text) {
  target.innerHTML = markdownHtml(text);
  addCopyButtons(target);
}
