// Answers rendered as Markdown (marked) and sanitized (DOMPurify) before they reach the DOM: a model
// can write any HTML, and none of it may run or load anything. Images are dropped (the page works
// offline and must not call out to hosts an answer names); links open in a new tab without opener.
// A streaming answer is parsed again at most once per animation frame, not once per token; code
// blocks of a finished answer are highlighted by highlight.js, loaded from this page's own origin
// (a chunk of the bundle) the first time an answer has code.
import DOMPurify from "dompurify";
import { marked } from "marked";

import { copyText } from "./clipboard.js";

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

/** A "Copy" button on each code block of a rendered answer. */
function addCopyButtons(target) {
  for (const pre of target.querySelectorAll("pre")) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy-code";
    button.textContent = "Copy";
    button.setAttribute("aria-label", "Copy this code");
    const code = pre.querySelector("code") ?? pre;
    button.addEventListener("click", () => copyText(code.textContent, button, "Copy", code));
    pre.prepend(button);
  }
}

let highlighter = null;

/** Highlights the code blocks in `target` (highlight.js escapes the code it wraps in spans). */
async function highlightCode(target) {
  const blocks = [...target.querySelectorAll("pre code")];
  if (!blocks.length) return;
  highlighter ??= import("highlight.js/lib/common").then((module) => module.default, () => null);
  const hljs = await highlighter;  // null when the chunk could not load: the code stays plain
  for (const code of blocks) if (hljs && code.isConnected && !code.dataset.highlighted) hljs.highlightElement(code);
}

/** Shows a finished Markdown answer in `target`, code highlighted. */
export function renderMarkdown(target, text) {
  target.innerHTML = markdownHtml(text);
  addCopyButtons(target);
  return highlightCode(target);
}

/**
 * The view of a streaming answer in `target`: show(text) renders the newest text at most once per
 * animation frame; finish(text) renders the final text now. afterRender() runs after each render.
 */
export function streamingView(target, afterRender) {
  let latest = "";
  let frame = 0;
  const draw = () => {
    frame = 0;
    target.innerHTML = markdownHtml(latest);
    afterRender();
  };
  return {
    show(text) {
      latest = text;
      frame ||= requestAnimationFrame(draw);
    },
    finish(text) {
      cancelAnimationFrame(frame);
      frame = 0;
      const highlighted = renderMarkdown(target, text);
      afterRender();
      return highlighted;
    },
  };
}
