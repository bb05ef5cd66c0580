// Copy buttons (a code block, an answer, the benchmark figures): each says whether the copy worked.
// Where the browser refuses the clipboard (no permission, the page not focused) the text is
// selected instead, so Ctrl+C copies it; the button's label comes back after two seconds.

/** Copies `text`; on failure selects the contents of `select`. `label` is the button's own text. */
export async function copyText(text, button, label, select) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Select and copy (Ctrl+C)";
    const range = document.createRange();
    range.selectNodeContents(select);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
  }
  setTimeout(() => { button.textContent = label; }, 2000);
}
