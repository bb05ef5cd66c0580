"""The web client runs REAL MLC-LLM output in real headless Chromium (SwiftShader WebGPU).

The dists are the fixture real-tiny (tests/fixtures/real-tiny: what `webslm build` made with
MLC-LLM v0.19.0, its AppConfig with the weights' digests), copied, served by the real `webslm serve`
server. Unlike the stand-in browser tests (test_web_browser.py, test_web_chat.py), these load the
real wasm and weights and generate.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browser.harness import Browser, Page, open_app, running_server
from conftest import REAL_TINY, require, writable_copy

from webslm.serve import Site, ensure_web_bundle, find_models

pytestmark = pytest.mark.browser

F32_ID = "qwen2-tiny-q4f32_1"
F16_ID = "qwen2-tiny-f16-q4f16_1"
LOAD_TIMEOUT_MS = 120000
SETTLED = "['ready','error','refused'].includes(document.querySelector('.pane').dataset.state)"
# Every different rendering of the streaming answer, recorded as it happens.
RECORD_STREAM = """(() => { window.seen = [];
    new MutationObserver(() => {
        const body = document.querySelector('.bubble.assistant:last-of-type .body');
        if (body && body.innerHTML !== window.seen.at(-1)) window.seen.push(body.innerHTML); })
      .observe(document.getElementById('panes'),
               {subtree: true, childList: true, characterData: true});
    })()"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    require(REAL_TINY.is_dir(), f"the real-tiny fixture is missing at {REAL_TINY}")
    dist = tmp_path_factory.mktemp("real") / "dist"
    for folder, served in (("dist-q4f32_1", "qwen2-tiny"), ("dist-q4f16_1", "qwen2-tiny-f16")):
        writable_copy(REAL_TINY / folder, dist / served)
    with running_server(Site(web=ensure_web_bundle(), models=find_models([dist]))) as served:
        yield served


def pane(page: Page) -> dict[str, str]:
    return page.eval(js="""(() => { const p = document.querySelector('.pane');
        return {state: p.dataset.state, status: p.querySelector('.status').innerText}; })()""")


def answer_html(page: Page) -> str:
    return page.eval(js="document.querySelector('.bubble.assistant:last-of-type .body').innerHTML")


def test_the_real_model_streams_a_reply_and_stop_interrupts_it(browser: Browser, server) -> None:
    base, access_log = server
    page = open_app(browser, f"{base}?a={F32_ID}")
    page.click(selector="#load")
    page.wait_for(SETTLED, LOAD_TIMEOUT_MS)
    state = pane(page)
    assert state["state"] == "ready", state
    assert state["status"].startswith("Ready. All 0.1 MB of weights match their recorded hashes")
    library = "/models/qwen2-tiny/resolve/main/libs/qwen2-tiny-q4f32_1-webgpu.wasm"
    assert f'"GET {library}' in "\n".join(access_log)
    # Streamed: the answer is rendered again and again while the model generates. The random
    # tiny model samples one of its 2 stop tokens (of 445) now and then, and some of its tokens
    # are partial characters that change nothing on screen, so a reply can end before it has
    # been seen streaming (measured: 4 of 20 replies ended within 5 renders): ask again, up to
    # 6 times.
    for _ in range(6):
        page.eval(js=RECORD_STREAM)
        page.fill(selector="#question", text="Hello, who are you?")
        page.click(selector="#send")
        page.wait_for("window.seen.length >= 6 || "
                      "document.querySelector('.pane').dataset.state !== 'generating'", 60000)
        if pane(page)["state"] == "generating":
            break
    renders = page.eval(js="window.seen.length")
    assert pane(page)["state"] == "generating", (pane(page), renders, answer_html(page))
    assert renders >= 6
    assert page.eval(js="document.getElementById('stop').disabled") is False
    page.click(selector="#stop")
    page.wait_for("document.querySelector('.pane').dataset.state !== 'generating'", 30000)
    assert pane(page)["state"] == "ready"
    stopped = answer_html(page)
    page.eval(js="new Promise(r => setTimeout(r, 1500))")
    assert answer_html(page) == stopped  # interrupted: nothing more arrives
    assert page.eval(js="document.getElementById('send').disabled") is False
    assert page.log()["errors"] == []
    page.shot("real-model-stopped")


def test_the_real_f16_model_is_refused_before_its_library_is_fetched(
        browser: Browser, server) -> None:
    base, access_log = server
    page = open_app(browser, f"{base}?a={F16_ID}")
    state = pane(page)
    assert state["state"] == "refused"
    assert "needs the WebGPU feature shader-f16" in state["status"]
    assert page.eval(js="document.getElementById('load').disabled") is True
    # Never fetched: at most a HEAD for the download size the picker shows.
    assert not [line for line in access_log
                if "qwen2-tiny-f16-q4f16_1-webgpu.wasm" in line and '"HEAD ' not in line]
    assert not [r for r in page.log()["requests"]
                if r["url"].endswith(".wasm") and r["method"] != "HEAD"]
    page.shot("real-f16-refused")


def test_a_conversation_longer_than_the_window_keeps_working(browser: Browser, server) -> None:
    """Three questions of ~1,800 tokens against the 4,096-token window: the third no longer fits
    with the whole conversation, so its request carries the latest turn that fits, counted with
    the model's own tokenizer, and the page shows where the model's memory begins. (Before, the
    page sent the whole history, and web-llm refused every request once it passed the window.)"""
    base, _ = server
    page = open_app(browser, f"{base}?a={F32_ID}")
    page.click(selector="#settings summary")
    page.fill(selector="#max-tokens", text="48")
    page.click(selector="#load")
    page.wait_for(SETTLED, LOAD_TIMEOUT_MS)
    assert pane(page)["state"] == "ready", pane(page)
    facts = "document.querySelector('.pane').dataset"
    assert page.eval(js=f"{facts}.contextWindow") == "4096"
    assert page.eval(js=f"{facts}.exactCount") == "yes"  # web-llm's tokenizer, not a byte bound
    sentence = "The keeper climbed the stairs of the old lighthouse and looked out over the sea. "
    counts = []
    for n in range(3):
        page.fill(selector="#question", text=f"Question {n}: " + sentence * 31)
        page.click(selector="#send")
        page.wait_for("document.querySelector('.pane').dataset.state === 'ready' && "
                      "!document.getElementById('send').disabled", LOAD_TIMEOUT_MS)
        assert page.eval(js="document.querySelectorAll('.bubble.failed').length") == 0, \
            page.text(".bubble.failed")
        counts.append((int(page.eval(js=f"{facts}.promptEstimate")),
                       int(page.eval(js=f"{facts}.promptTokens"))))
    # The first request is the question alone: the page's count is web-llm's, token for token.
    assert counts[0][0] == counts[0][1], counts
    # Every request fits the window with room for the 48-token answer.
    assert all(estimate <= 4096 - 48 for estimate, _ in counts), counts
    divider = page.eval(js="""(() => { const d = document.querySelector('.memory-start');
        return d && [d.innerText, Number(d.nextElementSibling.dataset.index)]; })()""")
    assert divider and "(4,096 tokens)" in divider[0], divider
    assert divider[1] == 2  # right above the second question: the first turn no longer fits
    assert page.eval(js="document.querySelectorAll('.bubble.assistant').length") == 3
    print("prompt tokens (page estimate, web-llm usage) per request:", counts)
    page.shot("real-model-long-conversation")
