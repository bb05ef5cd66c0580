"""The chat a user expects, in real headless Chromium: Markdown, saved conversations, following the
stream, Enter rules, failures in words, the picker, speeds and benchmark, layout at 390 px,
accessibility and dark mode.

The page, its checks and web-llm's worker protocol are real; the engine inside the worker is the
TEST STAND-IN tests/browser/scripted_worker.js, so each answer is known and instant (the real
model generating on SwiftShader is tests/test_web_real.py); the models are TEST STAND-IN dist
folders (tests/browser/fakedist.py) served by the real `webslm serve` server. Screenshots at
1200 px and 390 px go to test-artifacts/web/.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from browser.fakedist import FINETUNE, make_fake_dist
from browser.harness import Browser, Page, browser_missing, open_app, running_server, scripted_web
from conftest import require

from webslm.serve import Site, ensure_web_bundle, find_models

pytestmark = pytest.mark.browser

READY = "document.querySelectorAll('.pane').length > 0 && [...document.querySelectorAll('.pane')]" \
        ".every(p => ['refused','error','ready'].includes(p.dataset.state))"
IDLE = "!document.getElementById('send').disabled && ![...document.querySelectorAll('.pane')]" \
       ".some(p => p.dataset.state === 'generating')"
# WCAG relative luminance and contrast of an element's text on its effective background.
CONTRAST_JS = """
window.wcag = (() => {
  const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
  const linear = (v) => {
    v /= 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
  };
  const lum = ([r, g, b]) => [r, g, b].map(linear)
    .reduce((s, v, i) => s + v * [0.2126, 0.7152, 0.0722][i], 0);
  const ratio = (a, b) => {
    const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
    return (x + 0.05) / (y + 0.05);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length < 4 || c[3] > 0) return c.slice(0, 3);
    }
    return rgb(getComputedStyle(document.documentElement).backgroundColor).slice(0, 3);
  };
  return {
    text: (el) => ratio(rgb(getComputedStyle(el).color).slice(0, 3), background(el)),
    border: (el) => ratio(rgb(getComputedStyle(el).borderTopColor).slice(0, 3),
                          background(el.parentElement)),
  };
})();
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require(browser_missing() is None, f"browser tests need: {browser_missing()}")
    dist = tmp_path_factory.mktemp("chat") / "dist"
    make_fake_dist(dist, "a-old", webllm_version="0.2.78")
    make_fake_dist(dist, "broken")
    make_fake_dist(dist, "tiny", system_prompt="Answer briefly.")
    make_fake_dist(dist, "tiny-ft", finetune=FINETUNE, system_prompt=FINETUNE["system_prompt"])
    make_fake_dist(dist, "tiny16", "q4f16_1")
    web = scripted_web(ensure_web_bundle(), tmp_path_factory.mktemp("web"))
    with running_server(Site(web=web, models=find_models([dist]))) as (base, _):
        yield base


def loaded(browser: Browser, base: str, query: str = "?a=tiny-q4f32_1") -> Page:
    page = open_app(browser, base + query)
    page.click(selector="#load")
    page.wait_for(READY, 30000)
    return page


def ask(page: Page, question: str) -> None:
    page.fill(selector="#question", text=question)
    page.click(selector="#send")
    page.wait_for(IDLE, 30000)


def requests(page: Page) -> list[dict]:
    prefix = "scripted-engine request "
    return [json.loads(m["text"][len(prefix):]) for m in page.log()["console"]
            if m.get("worker") and m["text"].startswith(prefix)]


def js(page: Page, expression: str):
    return page.eval(js=expression)


# ---------------------------------------------------------------------------- 1. Markdown


def test_answers_render_as_sanitized_markdown_with_copy_buttons(browser: Browser,
                                                                server: str) -> None:
    page = loaded(browser, server)
    page.grant(permissions=["clipboard-read", "clipboard-write"])
    ask(page, "Answer in markdown")
    answer = ".bubble.assistant .body"
    items = js(page, f"[...document.querySelectorAll('{answer} ol li')].map(l => l.textContent)")
    assert items == ["First step", "Second step"]
    assert js(page, f"document.querySelector('{answer} strong').textContent") == "plan"
    assert js(page, f"document.querySelector('{answer} em').textContent") == "emphasis"
    assert "print('hello')" in js(page, f"document.querySelector('{answer} pre code').textContent")
    # The model's HTML never reaches the DOM: no image, no script, no javascript: link, nothing ran.
    assert js(page, f"document.querySelectorAll('{answer} img, {answer} script').length") == 0
    hrefs = js(page, f"[...document.querySelectorAll('{answer} a')]"
                     ".map(a => a.getAttribute('href'))")
    assert not [h for h in hrefs if h and h.lower().startswith("javascript:")]
    assert js(page, "window.__xss ?? null") is None
    page.click(selector=".copy-code")
    assert js(page, "navigator.clipboard.readText()") == "print('hello')\n"
    assert page.text(".copy-code") == "Copied"
    page.shot("chat-markdown-1200")
    page.viewport(width=390, height=844)
    page.shot("chat-markdown-390")


# ---------------------------------------------------------------------------- 2. conversations


def test_conversations_persist_per_model_and_can_be_deleted(browser: Browser, server: str) -> None:
    page = loaded(browser, server)
    ask(page, "hello there")
    # A reload restores the conversation and, the model being cached, loads it without Load.
    page.goto(url=server + "?a=tiny-q4f32_1")
    page.wait_for("document.body.dataset.ready === 'yes'")
    page.wait_for(READY, 30000)
    assert js(page, "document.querySelector('.pane').dataset.state") == "ready"
    assert js(page, "document.getElementById('download-size').hidden") is True
    assert js(page, "[...document.querySelectorAll('.bubble')].map(b => b.className)") == \
        ["bubble user", "bubble assistant"]
    assert "hello there" in page.text(".bubble.user")
    # New chat starts empty; both conversations are listed; the old one can be reopened.
    page.click(selector=".new-chat")
    assert js(page, "document.querySelectorAll('.bubble').length") == 0
    assert "Try one of these" in page.text(".empty-state")
    ask(page, "second chat")
    titles = js(page, "[...document.querySelectorAll('.history option')].map(o => o.text)")
    assert titles == ["second chat", "hello there"]
    # Delete asks first; cancelling keeps it, confirming removes it from IndexedDB.
    page.click(selector=".delete-chat")
    assert js(page, "document.getElementById('confirm').open") is True
    page.click(selector="#confirm button[value=cancel]")
    assert len(js(page, "[...document.querySelectorAll('.history option')]")) == 2
    page.click(selector=".delete-chat")
    page.click(selector="#confirm-ok")
    page.wait_for("document.querySelectorAll('.history option').length === 1")
    assert js(page, "document.querySelector('.history option').text") == "hello there"
    assert "hello there" in page.text(".bubble.user")  # the remaining conversation is shown
    stored = js(page, """new Promise((resolve) => indexedDB.open('webslm').onsuccess = (e) =>
        e.target.result.transaction('conversations').objectStore('conversations').getAll()
         .onsuccess = (r) => resolve(r.target.result.map(c => [c.modelId, c.title])))""")
    assert stored == [["tiny-q4f32_1", "hello there"]]
    # Changing the model asks before closing the conversation; Cancel keeps everything.
    js(page, "(() => { const s = document.getElementById('model-a'); s.value = 'tiny-ft-q4f32_1';"
             " s.dispatchEvent(new Event('change')); })()")
    assert js(page, "document.getElementById('confirm').open") is True
    page.click(selector="#confirm button[value=cancel]")
    # the dialog's close event (which restores the choice) is a task queued after the click
    page.wait_for("document.getElementById('model-a').value !== 'tiny-ft-q4f32_1'")
    assert js(page, "document.getElementById('model-a').value") == "tiny-q4f32_1"
    assert js(page, "document.querySelector('.pane').dataset.modelId") == "tiny-q4f32_1"
    js(page, "(() => { const c = document.getElementById('compare'); c.checked = true;"
             " c.dispatchEvent(new Event('change')); })()")
    page.click(selector="#confirm-ok")
    page.wait_for("document.querySelectorAll('.pane').length === 2")
    # Each model keeps its own conversations: tiny's is back (and loads from the cache on its
    # own), the other model has none and waits for Load, with its download size shown.
    page.wait_for("document.querySelector('.pane').dataset.state === 'ready'", 30000)
    assert "hello there" in js(page, "document.querySelectorAll('.pane')[0].innerText")
    assert js(page, "document.querySelectorAll('.pane')[1].querySelectorAll('.bubble').length") == 0
    assert js(page, "document.querySelectorAll('.pane')[1].dataset.state") == "idle"
    assert page.text("#download-size") == \
        "First load downloads ~0.1 MB once; after that it works offline."


# ---------------------------------------------------------------------------- 3. following


def test_the_transcript_follows_the_stream_unless_scrolled_up(browser: Browser,
                                                              server: str) -> None:
    page = loaded(browser, server)
    page.fill(selector="#question", text="a long answer please")
    page.click(selector="#send")
    at_end = ("(() => { const t = document.querySelector('.transcript');"
              " return t.scrollTop + t.clientHeight >= t.scrollHeight - 30; })()")
    lines = "document.querySelectorAll('.bubble.assistant p').length"
    page.wait_for(f"{lines} > 20")
    assert js(page, at_end) is True
    js(page, "(() => { const t = document.querySelector('.transcript'); t.scrollTop = 0;"
             " t.dispatchEvent(new Event('scroll')); })()")
    page.wait_for(f"{lines} > 40")
    assert js(page, "document.querySelector('.transcript').scrollTop") == 0
    js(page, "(() => { const t = document.querySelector('.transcript');"
             " t.scrollTop = t.scrollHeight;"
             " t.dispatchEvent(new Event('scroll')); })()")
    page.wait_for(f"{lines} > 60")
    assert js(page, at_end) is True
    page.wait_for(IDLE, 30000)
    assert js(page, at_end) is True


# ---------------------------------------------------------------------------- 4. Enter


def test_enter_does_not_send_while_streaming_or_composing(browser: Browser, server: str) -> None:
    page = loaded(browser, server)
    page.fill(selector="#question", text="slow one")
    page.press(key="Enter")
    page.wait_for("document.querySelector('.pane').dataset.state === 'generating'")
    assert js(page, "document.activeElement.id") == "question"  # focus stays in the question box
    page.type(text="second question")
    page.press(key="Enter")
    assert js(page, "document.getElementById('question').value") == "second question"
    page.wait_for(IDLE, 30000)
    assert len(requests(page)) == 1
    # Enter that confirms an IME composition is not a send.
    js(page, "document.getElementById('question').dispatchEvent(new KeyboardEvent('keydown',"
             " {key: 'Enter', isComposing: true, bubbles: true, cancelable: true}))")
    assert len(requests(page)) == 1
    page.press(key="Enter")
    page.wait_for(IDLE, 30000)
    page.wait_for("document.querySelectorAll('.bubble').length === 4")
    second = requests(page)[1]
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    assert second["messages"][2]["content"] == "Slow answer in parts."


# ---------------------------------------------------------------------------- 5. failures


def test_a_failed_load_says_what_failed_and_offers_retry(browser: Browser, server: str) -> None:
    page = loaded(browser, server, "?a=broken-q4f32_1")
    status = page.text(".pane .status")
    assert js(page, "document.querySelector('.pane').dataset.state") == "error"
    assert status.startswith("Could not load broken-q4f32_1: the engine stopped with an unexpected "
                             "error while loading the weights onto the GPU. Press Retry")
    assert "TypeError" not in status and "undefined" not in status
    detail = js(page, "document.querySelector('.failure-detail').textContent")
    assert "Cannot read properties of undefined" in detail

    def workers() -> list[str]:
        return [r["url"] for r in page.log()["requests"] if r["url"].endswith("/worker.js")]

    assert len(workers()) == 1
    page.click(selector=".retry")
    page.wait_for(READY, 30000)
    assert len(workers()) == 2  # Retry really loads again
    page.shot("load-failed-retry")


def test_a_failed_answer_keeps_its_question_and_offers_retry_there(browser: Browser,
                                                                  server: str) -> None:
    page = loaded(browser, server)
    ask(page, "a flaky question")
    failed = ".bubble.assistant.failed"
    assert js(page, f"document.querySelectorAll('{failed}').length") == 1
    assert page.text(".bubble.user .body") == "a flaky question"  # the question stays
    assert page.text(f"{failed} .failure-headline") == "The model stopped with an error"
    assert page.text(f"{failed} .failure-summary").startswith(
        "No answer: the model stopped with an error. Press Retry")
    # The raw error is on the page (a disclosure keyboard and touch users can open), not a tooltip.
    page.click(selector=f"{failed} .failure-details summary")
    assert "Cannot read properties of undefined" in page.text(f"{failed} .failure-detail")
    assert js(page, "document.querySelector('.pane .status').title") == ""
    page.shot("answer-failed")
    # A failed turn is never sent again as history.
    ask(page, "and now?")
    assert [(m["role"], m["content"]) for m in requests(page)[-1]["messages"]] == [
        ("system", "Answer briefly."), ("user", "and now?")]
    # Retry answers that question again, in its place; the turns after it stay.
    page.click(selector=f"{failed} .retry-answer")
    page.wait_for(IDLE, 30000)
    page.wait_for(f"document.querySelectorAll('{failed}').length === 0")
    retried = requests(page)[-1]
    assert [(m["role"], m["content"]) for m in retried["messages"]] == [
        ("system", "Answer briefly."), ("user", "a flaky question")]
    bubbles = js(page, "[...document.querySelectorAll('.bubble .body')].map(b => b.innerText)")
    assert bubbles == ["a flaky question", "You asked: a flaky question (turn 1).",
                       "and now?", "You asked: and now? (turn 1)."]


def test_an_answer_that_cannot_be_retried_offers_no_retry(browser: Browser, server: str) -> None:
    page = loaded(browser, server)
    ask(page, "please fail")  # "fail" always fails: Retry is offered (a new try may work)...
    assert js(page, "document.querySelectorAll('.bubble.failed .retry-answer').length") == 1
    # ...but a question that alone does not fit the model's memory (512 tokens, 128 for the
    # answer) cannot be helped by retrying: it says what to do instead.
    ask(page, "x" * 2000)
    last = ".bubble.failed:last-child"
    assert page.text(f"{last} .failure-headline") == "Your message is too long for this model"
    assert "Shorten it (Edit), or lower Max answer tokens" in page.text(f"{last} .failure-summary")
    assert js(page, f"document.querySelectorAll('{last} .retry-answer').length") == 0
    assert not [r for r in requests(page) if "x" * 2000 in json.dumps(r)]  # never sent


# ---------------------------------------------------------------------------- 5b. per message


def test_regenerate_edit_copy_and_delete_a_turn(browser: Browser, server: str) -> None:
    page = loaded(browser, server)
    page.grant(permissions=["clipboard-read", "clipboard-write"])
    for question in ("first question", "Answer in markdown", "third question"):
        ask(page, question)
    texts = "[...document.querySelectorAll('.bubble .body')].map(b => b.innerText)"
    # Only the last answer can be regenerated; it is asked again with the same history.
    assert js(page, "document.querySelectorAll('.regenerate').length") == 1
    before = len(requests(page))
    page.click(selector=".regenerate")
    page.wait_for(IDLE, 30000)
    assert len(requests(page)) == before + 1
    again = requests(page)[-1]
    assert [m["content"] for m in again["messages"]][-1] == "third question"
    assert len(again["messages"]) == 6  # system + 2 turns + the question
    assert js(page, "document.querySelectorAll('.bubble').length") == 6
    # Copy gives the answer's Markdown, not its rendered text.
    page.click(selector=".bubble.assistant[data-index='3'] .copy-answer")
    copied = js(page, "navigator.clipboard.readText()")
    assert copied.startswith("Here is a **plan** with *emphasis*")
    # Editing the first question replaces it and drops every answer after it.
    page.click(selector=".bubble.user[data-index='0'] .edit")
    page.fill(selector=".edit-question textarea", text="an edited question")
    page.click(selector=".edit-question button[type=submit]")
    page.wait_for(IDLE, 30000)
    page.wait_for("document.querySelectorAll('.bubble').length === 2")
    assert js(page, texts) == ["an edited question", "You asked: an edited question (turn 1)."]
    assert [m["content"] for m in requests(page)[-1]["messages"]] == [
        "Answer briefly.", "an edited question"]
    # Deleting a turn removes the question and its answer, in the page and in the browser.
    ask(page, "second turn")
    page.click(selector=".bubble.user[data-index='0'] .delete-turn")
    page.wait_for("document.querySelectorAll('.bubble').length === 2")
    assert js(page, texts) == ["second turn", "You asked: second turn (turn 2)."]
    page.goto(url=server + "?a=tiny-q4f32_1")
    page.wait_for(READY, 30000)
    assert js(page, texts) == ["second turn", "You asked: second turn (turn 2)."]


def test_a_long_chat_sends_what_fits_and_shows_where_memory_begins(browser: Browser,
                                                                   server: str) -> None:
    """The stand-in model's window is 512 tokens (128 kept for the answer); its tokenizer file is
    a stand-in web-tokenizers cannot read, so the page counts UTF-8 bytes (test_web_real.py runs
    the real tokenizer)."""
    page = loaded(browser, server)
    assert js(page, "document.querySelector('.pane').dataset.contextWindow") == "512"
    assert js(page, "document.querySelector('.pane').dataset.exactCount") == "no"
    questions = [f"question {n}: " + " ".join(["words"] * 15) for n in range(8)]
    for question in questions:
        ask(page, question)
    sent = requests(page)
    first = [m["content"] for m in sent[0]["messages"]]
    assert first == ["Answer briefly.", questions[0]]
    last = sent[-1]
    assert last["max_tokens"] == 128
    contents = [m["content"] for m in last["messages"]]
    # The system prompt and the question always go; the oldest turns went first.
    assert contents[0] == "Answer briefly." and contents[-1] == questions[-1]
    assert questions[0] not in contents
    kept = [q for q in questions if q in contents]
    assert kept == questions[len(questions) - len(kept):] and 1 <= len(kept) < len(questions)
    estimate = int(js(page, "document.querySelector('.pane').dataset.promptEstimate"))
    assert estimate <= 512 - 128
    # The divider sits right above the oldest question the model saw.
    divider = js(page, """(() => { const d = document.querySelector('.memory-start');
        return [d.innerText, d.nextElementSibling.querySelector('.body').innerText]; })()""")
    assert divider[0].startswith("The model's memory begins here")
    assert "(512 tokens)" in divider[0]
    assert divider[1] == kept[0]
    page.shot("memory-divider")


# ---------------------------------------------------------------------------- 6. picker, examples


def test_the_picker_shows_sizes_and_marks_refused_models(browser: Browser, server: str) -> None:
    page = open_app(browser, server)
    options = js(page, "[...document.querySelectorAll('#model-a option')]"
                       ".map(o => [o.value, o.text])")
    labels = dict(options)
    vram = "needs ~0.9 MB of GPU memory"  # the record's vram_required_MB
    assert labels["tiny-q4f32_1"] == f"tiny-q4f32_1 · 0.1 MB download · {vram}"
    assert labels["a-old-q4f32_1"] == \
        f"a-old-q4f32_1 · 0.1 MB download · {vram} · won't run in this browser"
    assert labels["tiny16-q4f16_1"].endswith("won't run in this browser")  # no shader-f16 here
    assert options[0][0] == "a-old-q4f32_1"
    # The first model that runs here is preselected, not the refused first one.
    assert js(page, "document.getElementById('model-a').value") == "broken-q4f32_1"


def test_example_prompts_wait_for_the_model_and_replace_the_question(browser: Browser,
                                                                     server: str) -> None:
    page = open_app(browser, server + "?a=tiny-q4f32_1")
    examples = "[...document.querySelectorAll('.example')]"
    assert js(page, f"{examples}.length") == 3
    assert js(page, f"{examples}.every(b => b.disabled)")
    page.click(selector="#load")
    page.wait_for(READY, 30000)
    assert js(page, f"{examples}.every(b => !b.disabled)")
    page.fill(selector="#question", text="something typed before")
    page.click(selector=".example")
    first = js(page, f"{examples}[0].textContent")
    assert js(page, "document.getElementById('question').value") == first
    assert js(page, "document.activeElement.id") == "question"


# ---------------------------------------------------------------------------- 7. speeds


def test_speeds_in_both_panes_and_a_copyable_benchmark(browser: Browser, server: str) -> None:
    page = loaded(browser, server, "?compare=1&a=tiny-q4f32_1&b=tiny-ft-q4f32_1")
    ask(page, "hi")
    page.wait_for("document.querySelectorAll('.speed').length === 2")
    assert js(page, "[...document.querySelectorAll('.pane .speed')].map(s => s.textContent)") == \
        ["prefill 321.5 tokens/s · decode 45.5 tokens/s"] * 2
    page.click(selector="#settings summary")
    page.click(selector="#benchmark")
    page.wait_for("!document.getElementById('benchmark-copy').hidden", 30000)
    result = page.text("#benchmark-result")
    assert result.startswith("webslm speed benchmark: 128 tokens, web-llm ")
    for model in ("tiny-q4f32_1", "tiny-ft-q4f32_1"):
        assert (f"{model}: prefill 321.5 tokens/s · decode 45.5 tokens/s "
                "(prompt 12 tokens, 128 generated)") in result
    bench = [r for r in requests(page) if r.get("ignore_eos")]
    assert len(bench) == 2 and all(r["max_tokens"] == 128 and r["ignore_eos"] for r in bench)
    assert js(page, "document.querySelectorAll('.bubble').length") == 4  # not part of the chat
    page.shot("compare-speeds-1200")


def test_copy_figures_says_whether_the_copy_worked(browser: Browser, server: str) -> None:
    """Copied when the clipboard takes the figures; where the browser refuses it, the button says
    so and the figures are selected for Ctrl+C (the button said "Copied" either way)."""
    page = loaded(browser, server)
    page.grant(permissions=["clipboard-read", "clipboard-write"])
    page.click(selector="#settings summary")
    page.click(selector="#benchmark")
    page.wait_for("!document.getElementById('benchmark-copy').hidden", 30000)
    figures = page.text("#benchmark-result")
    page.click(selector="#benchmark-copy")
    page.wait_for("document.getElementById('benchmark-copy').textContent === 'Copied'")
    assert js(page, "navigator.clipboard.readText()") == figures
    page.wait_for("document.getElementById('benchmark-copy').textContent === 'Copy figures'", 5000)
    js(page, "navigator.clipboard.writeText = () => Promise.reject(new Error('denied'))")
    page.click(selector="#benchmark-copy")
    page.wait_for("document.getElementById('benchmark-copy').textContent !== 'Copy figures'")
    assert page.text("#benchmark-copy") == "Select and copy (Ctrl+C)"
    assert js(page, "getSelection().toString()") == figures


# ---------------------------------------------------------------------------- 8. layout


def no_horizontal_scroll(page: Page) -> bool:
    return js(page, "document.documentElement.scrollWidth <= window.innerWidth")


def test_the_layout_fits_390px_and_focus_follows_the_work(browser: Browser, server: str) -> None:
    page = browser.page(webgpu=True)
    page.viewport(width=390, height=844)
    page.goto(url=server + "?compare=1&a=tiny-q4f32_1&b=tiny-ft-q4f32_1")
    page.wait_for("document.body.dataset.ready === 'yes'")
    assert no_horizontal_scroll(page)
    assert page.text("#download-size").startswith("First load downloads")
    page.shot("compare-390-before-load")
    page.click(selector="#load")
    page.wait_for(READY, 30000)
    assert js(page, "document.activeElement.id") == "question"
    assert js(page, "document.getElementById('download-size').hidden") is True
    boxes = js(page, "[...document.querySelectorAll('.pane')]"
                     ".map(p => p.getBoundingClientRect().toJSON())")
    assert boxes[1]["top"] >= boxes[0]["bottom"]  # the panes stack
    ask(page, "Answer in markdown")
    assert js(page, "document.activeElement.id") == "question"
    assert no_horizontal_scroll(page)
    page.shot("compare-390")
    # A long progress text wraps instead of widening the page.
    js(page, "(() => { const p = document.querySelector('.progress'); p.hidden = false;"
             " p.querySelector('.progress-text').textContent = 'Weights: 3 of 8 shards checked"
             " (120 MB of 269 MB; 180 MB downloaded) and more words'; })()")
    assert no_horizontal_scroll(page)
    page.viewport(width=1200, height=800)
    page.shot("compare-1200")


# ---------------------------------------------------------------------------- 9. accessibility


def contrast_failures(page: Page) -> list[str]:
    js(page, CONTRAST_JS)
    return js(page, """(() => {
        const bad = [];
        const visible = (el) => el.offsetParent !== null && !el.disabled && el.textContent.trim();
        const texts = 'h1, h2, p, label, summary, .hint, .status, button, .bubble .body, .speed,'
          + ' option, .progress-text';
        for (const el of document.querySelectorAll(texts)) {
            if (!visible(el)) continue;
            const r = wcag.text(el);
            const what = `${el.tagName}.${el.className} "${el.textContent.trim().slice(0, 30)}"`;
            if (r < 4.5) bad.push(`${what} ${r.toFixed(2)}`);
        }
        for (const el of document.querySelectorAll('select, textarea, input')) {
            if (el.offsetParent === null) continue;
            const r = wcag.border(el);
            if (r < 3) bad.push(`border of ${el.tagName}#${el.id} ${r.toFixed(2)}`);
        }
        return bad;
    })()""")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_contrast_meets_wcag_aa(browser: Browser, server: str, scheme: str) -> None:
    page = browser.page(webgpu=True)
    page.media(colorScheme=scheme)
    page.goto(url=server + "?a=tiny-q4f32_1")
    page.wait_for("document.body.dataset.ready === 'yes'")
    assert contrast_failures(page) == []  # before loading: the examples, hint, Load
    page.click(selector="#load")
    page.wait_for(READY, 30000)
    ask(page, "Answer in markdown")
    page.click(selector="#settings summary")
    assert contrast_failures(page) == []


def test_the_whole_chat_works_from_the_keyboard(browser: Browser, server: str) -> None:
    page = open_app(browser, server + "?a=tiny-q4f32_1")
    order = []
    for _ in range(6):
        page.press(key="Tab")
        order.append(js(page, "document.activeElement.id || document.activeElement.className"))
    assert order[:3] == ["model-a", "compare", "load"], order
    while js(page, "document.activeElement.id") != "load":
        page.press(key="Shift+Tab")
    page.press(key="Enter")
    page.wait_for(READY, 30000)
    assert js(page, "document.activeElement.id") == "question"
    page.type(text="typed by keyboard")
    page.press(key="Enter")
    page.wait_for(IDLE, 30000)
    page.wait_for("document.querySelectorAll('.bubble.assistant').length === 1")
    assert "typed by keyboard" in page.text(".bubble.assistant")


# ---------------------------------------------------------------------------- 10. dark mode


def test_dark_mode_follows_the_system_setting(browser: Browser, server: str) -> None:
    page = browser.page(webgpu=True)
    background = "getComputedStyle(document.body).backgroundColor"
    page.media(colorScheme="light")
    page.goto(url=server + "?a=tiny-q4f32_1")
    page.wait_for("document.body.dataset.ready === 'yes'")
    light = js(page, background)
    page.media(colorScheme="dark")
    dark = js(page, background)
    assert light == "rgb(246, 247, 249)" and dark == "rgb(20, 23, 28)"
    assert js(page, "getComputedStyle(document.querySelector('.pane')).color") == \
        "rgb(232, 234, 240)"
    page.click(selector="#load")
    page.wait_for(READY, 30000)
    ask(page, "Answer in markdown")
    page.shot("dark-1200")
    page.viewport(width=390, height=844)
    page.shot("dark-390")


# ---------------------------------------------------------------------------- commands


def test_with_no_models_the_page_says_which_serve_commands_work(browser: Browser,
                                                                server: str) -> None:
    page = open_app(browser, server + "?index=/nothing.json")
    notice = page.text("#notice")
    assert "invoke serve dist" in notice
    assert "webslm serve --dist dist" in notice and "webslm serve dist" in notice
    assert re.search(r"Could not read the models index .*nothing\.json: HTTP 404", notice)


# ---------------------------------------------------------------------------- 11. the window


SIZES = {"desktop": (1280, 800), "phone": (390, 844)}
LAYOUT_JS = """(() => {
    const box = (s) => document.querySelector(s).getBoundingClientRect();
    const t = document.querySelector('.transcript');
    return {pageScrolls: document.documentElement.scrollHeight > window.innerHeight
                         || document.documentElement.scrollWidth > window.innerWidth,
            composerBottom: box('#ask').bottom, height: window.innerHeight,
            transcriptHeight: box('.transcript').height,
            transcriptScrolls: t.scrollHeight > t.clientHeight,
            overflow: getComputedStyle(t).overflowY}; })()"""


@pytest.mark.parametrize("size", SIZES)
def test_the_chat_fills_the_window_with_one_scroll_area(browser: Browser, server: str,
                                                        size: str) -> None:
    width, height = SIZES[size]
    page = browser.page(webgpu=True)
    page.viewport(width=width, height=height)
    page.goto(url=server + "?a=tiny-q4f32_1")
    page.wait_for("document.body.dataset.ready === 'yes'")
    page.click(selector="#load")
    page.wait_for(READY, 30000)
    for question in ("a long answer please", "a table please", "more words"):
        ask(page, question)
    layout = js(page, LAYOUT_JS)
    # The page itself never scrolls; the conversation does, and the composer sits at the bottom.
    assert layout["pageScrolls"] is False, layout
    assert layout["transcriptScrolls"] is True and layout["overflow"] == "auto", layout
    assert layout["height"] - 20 <= layout["composerBottom"] <= layout["height"], layout
    assert layout["transcriptHeight"] > 0.45 * height, layout  # most of the screen is the chat
    # Scrolled up, a button leads back to the latest message.
    jump = ".jump-latest"
    assert js(page, f"document.querySelector('{jump}').hidden") is True
    js(page, "(() => { const t = document.querySelector('.transcript'); t.scrollTop = 0;"
             " t.dispatchEvent(new Event('scroll')); })()")
    assert js(page, f"document.querySelector('{jump}').hidden") is False
    page.shot(f"jump-to-latest-{size}")
    page.click(selector=jump)
    assert js(page, "(() => { const t = document.querySelector('.transcript');"
                    " return t.scrollTop + t.clientHeight >= t.scrollHeight - 30; })()") is True
    assert js(page, f"document.querySelector('{jump}').hidden") is True


def test_tables_are_styled_and_code_is_highlighted_from_this_origin(browser: Browser,
                                                                    server: str) -> None:
    page = loaded(browser, server)
    ask(page, "a table please")
    cell = js(page, """(() => { const c = getComputedStyle(document.querySelector('.bubble td'));
        return [c.borderTopWidth, c.borderTopStyle, parseFloat(c.paddingLeft)]; })()""")
    assert cell[0] == "1px" and cell[1] == "solid" and cell[2] >= 6
    rows = js(page, "[...document.querySelectorAll('.bubble tr')].map(r => r.innerText)")
    assert len(rows) == 3
    page.wait_for("document.querySelector('.bubble pre code').dataset.highlighted === 'yes'")
    keyword = js(page, "getComputedStyle(document.querySelector('.hljs-keyword')).color")
    plain = js(page, "getComputedStyle(document.querySelector('.bubble pre code')).color")
    assert keyword != plain
    origin = server.rstrip("/")
    assert [r["url"] for r in page.log()["requests"] if not r["url"].startswith(origin)
            and not r["url"].startswith(("blob:", "data:"))] == []
    page.shot("table-and-code")


# ---------------------------------------------------------------------------- 12. bugs


def test_delete_chat_works_after_new_chat_and_picking_a_saved_one(browser: Browser,
                                                                  server: str) -> None:
    page = loaded(browser, server)
    ask(page, "keep this one")
    page.click(selector=".new-chat")
    assert js(page, "document.querySelector('.delete-chat').disabled") is True  # nothing to delete
    saved = js(page, "[...document.querySelectorAll('.history option')]"
                     ".find(o => o.text === 'keep this one').value")
    js(page, f"(() => {{ const s = document.querySelector('.history'); s.value = '{saved}';"
             " s.dispatchEvent(new Event('change')); })()")
    page.wait_for("document.querySelectorAll('.bubble').length === 2")
    page.wait_for("!document.querySelector('.delete-chat').disabled")


# ---------------------------------------------------------------------------- 13. settings, data


def test_settings_are_kept_per_model_across_reloads(browser: Browser, server: str) -> None:
    page = loaded(browser, server)
    page.click(selector="#settings summary")
    assert js(page, "document.getElementById('system-prompt').value") == "Answer briefly."
    assert js(page, "document.getElementById('max-tokens').placeholder") == "auto (128)"
    for field, value in (("#system-prompt", "Talk like a pirate."), ("#temperature", "1.1"),
                         ("#top-p", "0.5"), ("#max-tokens", "64")):
        page.fill(selector=field, text=value)
        js(page, f"document.querySelector('{field}').dispatchEvent(new Event('change'))")
    ask(page, "hello")
    sent = requests(page)[-1]
    assert (sent["messages"][0]["content"], sent["temperature"], sent["top_p"],
            sent["max_tokens"]) == ("Talk like a pirate.", 1.1, 0.5, 64)
    page.goto(url=server + "?a=tiny-ft-q4f32_1")  # another model: its own build's defaults
    page.wait_for("document.body.dataset.ready === 'yes'")
    assert js(page, "document.getElementById('system-prompt').value") == FINETUNE["system_prompt"]
    assert js(page, "document.getElementById('temperature').value") == "0.6"
    page.goto(url=server + "?a=tiny-q4f32_1")
    page.wait_for("document.body.dataset.ready === 'yes'")
    values = js(page, "['system-prompt', 'temperature', 'top-p', 'max-tokens']"
                      ".map(id => document.getElementById(id).value)")
    assert values == ["Talk like a pirate.", "1.1", "0.5", "64"]
    page.click(selector="#settings summary")
    page.click(selector="#reset-settings")
    assert js(page, "document.getElementById('system-prompt').value") == "Answer briefly."


def test_an_emptied_number_field_sends_the_builds_default(browser: Browser, server: str) -> None:
    """A temperature or top p cleared (or typed out of range) asks with the build's value: the
    request carried NaN, which web-llm's range check lets through to its sampler."""
    page = loaded(browser, server)
    page.click(selector="#settings summary")
    defaults = js(page, "['temperature', 'top-p']"
                        ".map(id => Number(document.getElementById(id).value))")
    for field, value in (("#temperature", ""), ("#top-p", "7")):
        page.fill(selector=field, text=value)
        js(page, f"document.querySelector('{field}').dispatchEvent(new Event('change'))")
    ask(page, "hello")
    sent = requests(page)[-1]
    assert [sent["temperature"], sent["top_p"]] == defaults == [0.6, 0.9]


def test_export_and_clear_all_data(browser: Browser, server: str) -> None:
    page = loaded(browser, server)
    ask(page, "Answer in markdown")
    saved = page.download(selector=".export-chat")
    assert saved["name"] == "Answer in markdown.md"
    assert saved["text"].startswith("# Answer in markdown\n\nA conversation with tiny-q4f32_1")
    assert "## You\n\nAnswer in markdown\n\n## tiny-q4f32_1\n\nHere is a **plan**" in saved["text"]
    page.click(selector="#settings summary")
    page.wait_for("document.getElementById('data-sizes').textContent !== ''")
    sizes = page.text("#data-sizes")
    assert re.fullmatch(r"This browser holds 1 saved chat \(0\.0 MB\) and 0\.1 MB of downloaded "
                        r"models\.", sizes), sizes
    page.click(selector="#clear-data")
    page.wait_for("document.getElementById('confirm').open")
    assert "1 saved chat" in page.text("#confirm-text")
    assert "0.1 MB of downloaded models" in page.text("#confirm-text")
    page.click(selector="#confirm-ok")
    page.wait_for("document.getElementById('data-sizes').textContent.includes('holds 0 saved')")
    assert page.text("#data-sizes") == \
        "This browser holds 0 saved chats (0.0 MB) and 0.0 MB of downloaded models."
    assert js(page, """(async () => { let n = 0; for (const name of await caches.keys())
        n += (await (await caches.open(name)).keys()).length; return n; })()""") == 0
    assert js(page, "document.querySelectorAll('.bubble').length") == 0
    assert js(page, "document.querySelector('.pane').dataset.state") == "idle"  # download again


# ---------------------------------------------------------------------------- 14. axe, screenshots


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_nothing_and_screenshots_at_both_sizes(browser: Browser, server: str,
                                                         scheme: str) -> None:
    page = browser.page(webgpu=True)
    page.media(colorScheme=scheme)
    page.goto(url=server + "?a=tiny-q4f32_1")
    page.wait_for("document.body.dataset.ready === 'yes'")
    assert page.axe() == []
    page.click(selector="#load")
    page.wait_for(READY, 30000)
    for question in ("Answer in markdown", "a table please", "a flaky one"):
        ask(page, question)
    assert page.axe() == []
    for size, (width, height) in SIZES.items():
        page.viewport(width=width, height=height)
        page.shot(f"chat-{size}-{width}x{height}-{scheme}")
    page.click(selector="#settings summary")
    page.wait_for("document.getElementById('data-sizes').textContent !== ''")
    assert page.axe() == []
    page.shot(f"settings-{scheme}")
