"""The web client runs REAL MLC-LLM output in real headless Chromium (SwiftShader WebGPU).

The dists are the shared fixture real-tiny (../shared/fixtures/real-tiny: what `webslm build` made
with MLC-LLM v0.19.0), copied, served by the real `webslm serve` server. Unlike the stand-in browser
tests (test_web_browser.py, failure cases), these load the real wasm and generate.
"""

from __future__ import annotations

import pytest
from browser.harness import Browser, Page, browser_missing
from conftest import REAL_TINY, require, writable_copy

from webslm.serve import Site, ensure_web_bundle, find_models

pytestmark = pytest.mark.browser

F32_ID = "qwen2-tiny-q4f32_1"
F16_ID = "qwen2-tiny-f16-q4f16_1"
LOAD_TIMEOUT_MS = 90000


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    require(browser_missing() is None, f"browser tests need: {browser_missing()}")
    require(REAL_TINY.is_dir(), f"the real-tiny fixture is missing at {REAL_TINY}")
    dist = tmp_path_factory.mktemp("real") / "dist"
    dist.mkdir()
    for name, served in (("dist-q4f32_1", "qwen2-tiny"), ("dist-q4f16_1", "qwen2-tiny-f16")):
        writable_copy(REAL_TINY / name, dist / served)
    return Site(web=ensure_web_bundle(), models=find_models([dist]))


def open_app(browser: Browser, base: str, model_id: str) -> Page:
    page = browser.page(webgpu=True)
    page.goto(url=f"{base}?a={model_id}")
    page.wait_for("document.body.dataset.ready === 'yes'")
    return page


def pane(page: Page) -> dict[str, str]:
    return page.eval(js="""(() => { const p = document.querySelector('.pane');
        return {state: p.dataset.state, status: p.querySelector('.status').innerText}; })()""")


def reply_text(page: Page) -> str:
    return page.text(".bubble.assistant:last-of-type")


def test_the_real_model_streams_a_reply_and_stop_interrupts_it(browser: Browser, server) -> None:  # noqa: ANN001
    base, access_log = server
    page = open_app(browser, base, F32_ID)
    page.click(selector="#load")
    page.wait_for("['ready','error','refused'].includes(document.querySelector('.pane').dataset.state)",
                  LOAD_TIMEOUT_MS)
    assert pane(page) == {"state": "ready", "status": "Ready. Works offline from now on."}
    library = "/models/qwen2-tiny/resolve/main/libs/qwen2-tiny-q4f32_1-webgpu.wasm"
    assert f'"GET {library}' in "\n".join(access_log)
    # Record every text the reply bubble shows while it streams.
    page.eval(js="""(() => { window.seen = [];
        new MutationObserver(() => {
            const b = document.querySelector('.bubble.assistant:last-of-type');
            if (b && b.textContent !== window.seen.at(-1)) window.seen.push(b.textContent); })
          .observe(document.getElementById('panes'),
                   {subtree: true, childList: true, characterData: true});
        })()""")
    page.fill(selector="#question", text="Hello, who are you?")
    page.click(selector="#send")
    page.wait_for("window.seen.length >= 5 && window.seen.at(-1).length > 10", 60000)
    assert pane(page)["state"] == "generating"
    assert page.eval(js="document.getElementById('stop').disabled") is False
    page.click(selector="#stop")
    page.wait_for("document.querySelector('.pane').dataset.state !== 'generating'", 20000)
    assert pane(page)["state"] == "ready"
    stopped = reply_text(page)
    seen = page.eval(js="window.seen")
    # Streamed: the bubble grew token by token, each text extending the one before.
    assert len(seen) >= 5 and all(b.startswith(a) for a, b in zip(seen, seen[1:], strict=False))
    assert stopped.startswith(seen[4]) and len(stopped) > 10
    page.eval(js="new Promise(r => setTimeout(r, 1500))")
    assert reply_text(page) == stopped  # interrupted: nothing more arrives
    assert page.eval(js="document.getElementById('send').disabled") is False
    log = page.log()
    assert log["errors"] == []
    page.shot("real-model-stopped")


def test_the_real_f16_model_is_refused_before_its_library_is_fetched(
        browser: Browser, server) -> None:  # noqa: ANN001
    base, access_log = server
    page = open_app(browser, base, F16_ID)
    state = pane(page)
    assert state["state"] == "refused"
    assert "needs the WebGPU feature shader-f16" in state["status"]
    assert page.eval(js="document.getElementById('load').disabled") is True
    assert not [line for line in access_log if "qwen2-tiny-f16-q4f16_1-webgpu.wasm" in line]
    assert not [r for r in page.log()["requests"] if r["url"].endswith(".wasm")]
    page.shot("real-f16-refused")
