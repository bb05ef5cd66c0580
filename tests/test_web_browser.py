"""The web client in real headless Chromium (Debian's chromium, driven by npm playwright-core).

Models are TEST STAND-IN dist folders (tests/browser/fakedist.py: the real layout and AppConfig
record, fake weights, an empty wasm module), served by the real `webslm serve` server. Without the
real toolchain no model can generate, so these tests stop where the engine instantiates the
library; everything before that (guards, integrity, engine construction, requests) is real.
Screenshots go to test-artifacts/web/.
"""

from __future__ import annotations

import json

import pytest
from browser.fakedist import make_fake_dist
from browser.harness import Browser, Page, browser_missing
from conftest import require

from webslm.serve import Site, ensure_web_bundle, find_models
from webslm.toolchain import load_lock

pytestmark = pytest.mark.browser

FINETUNE = {"base_model": "Qwen/Qwen2.5-0.5B-Instruct", "base_revision": None,
            "data_digest": "sha256:" + "0" * 64, "system_prompt": "You are a clinic assistant.",
            "recipe": {}, "webslm_version": "0.1.0"}
SETTLED = "['refused','error','ready'].includes(document.querySelector('.pane')?.dataset.state)"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    require(browser_missing() is None, f"browser tests need: {browser_missing()}")
    dist = tmp_path_factory.mktemp("web") / "dist"
    make_fake_dist(dist, "tiny", system_prompt="Answer briefly.")
    make_fake_dist(dist, "tiny-ft", finetune=FINETUNE, system_prompt=FINETUNE["system_prompt"])
    make_fake_dist(dist, "tiny16", "q4f16_1")
    make_fake_dist(dist, "oldrt", webllm_version="0.2.78")
    tampered = make_fake_dist(dist, "tampered")
    with open(tampered / "libs" / "tampered-q4f32_1-webgpu.wasm", "ab") as library:
        library.write(b"\0")
    return Site(web=ensure_web_bundle(), models=find_models([dist]))


def open_app(browser: Browser, base: str, query: str = "", *, webgpu: bool = True) -> Page:
    page = browser.page(webgpu=webgpu)
    page.goto(url=base + query)
    page.wait_for("document.body.dataset.ready === 'yes'")
    return page


def pane_states(page: Page) -> list[dict[str, str]]:
    return page.eval(js="""[...document.querySelectorAll('.pane')].map(p => ({
        id: p.dataset.modelId, state: p.dataset.state,
        status: p.querySelector('.status').innerText}))""")


def value(page: Page, element_id: str) -> str:
    return page.eval(js=f"document.getElementById({json.dumps(element_id)}).value")


def requested(page: Page) -> list[str]:
    return [r["url"] for r in page.log()["requests"]]


def test_the_page_loads_without_console_errors(browser: Browser, server) -> None:  # noqa: ANN001
    base, _ = server
    page = open_app(browser, base)
    log = page.log()
    assert log["errors"] == []
    assert [m for m in log["console"] if m["type"] == "error"] == []
    options = page.eval(js="[...document.querySelectorAll('#model-a option')].map(o => o.value)")
    assert options == ["oldrt-q4f32_1", "tampered-q4f32_1", "tiny-q4f32_1", "tiny-ft-q4f32_1",
                       "tiny16-q4f16_1"]
    assert "Try one of these" in page.text(".empty-state")
    assert page.text("#download-size") == ""  # oldrt (first) is refused: nothing to download
    page.shot("page-loaded")


def test_without_webgpu_the_page_says_why_and_loads_nothing(browser: Browser, server) -> None:  # noqa: ANN001
    base, _ = server
    page = open_app(browser, base, "?a=tiny-q4f32_1", webgpu=False)
    assert "offers no WebGPU adapter" in page.text("#notice")
    assert "Chrome or Edge" in page.text("#notice")
    assert pane_states(page)[0]["state"] == "refused"
    assert page.eval(js="document.getElementById('load').disabled") is True
    assert not [u for u in requested(page) if u.endswith(".wasm")]
    log = page.log()
    assert log["errors"] == [] and [m for m in log["console"] if m["type"] == "error"] == []
    page.shot("no-webgpu")


def test_an_f16_model_is_refused_on_an_adapter_without_shader_f16(browser: Browser, server) -> None:  # noqa: ANN001
    base, _ = server
    page = open_app(browser, base, "?a=tiny16-q4f16_1")
    assert page.eval(js="document.body.dataset.webgpu") == "yes"  # SwiftShader adapter
    [pane] = pane_states(page)
    assert pane["state"] == "refused"
    assert "needs the WebGPU feature shader-f16" in pane["status"]
    assert "q4f32_1" in pane["status"]
    assert not [u for u in requested(page) if u.endswith(".wasm")]
    page.shot("f16-refused")


def test_the_engine_gets_the_appconfig_and_fetches_from_the_served_urls(
        browser: Browser, server) -> None:  # noqa: ANN001
    base, access_log = server
    page = open_app(browser, base, "?a=tiny-q4f32_1")
    assert "First load downloads ~0.1 MB once" in page.text("#download-size")
    page.click(selector="#load")
    page.wait_for(SETTLED, 60000)
    folder = f"{base}models/tiny/resolve/main/"
    urls = requested(page)
    assert folder + "mlc-chat-config.json" in urls
    assert folder + "libs/tiny-q4f32_1-webgpu.wasm" in urls
    assert base + "worker.js" in urls  # the engine runs in a Web Worker
    served = "\n".join(access_log)
    assert '"GET /models/tiny/resolve/main/libs/tiny-q4f32_1-webgpu.wasm' in served
    # The checked bytes sit where web-llm's engine looks them up (the record's model_lib URL)...
    cached = page.eval(js="""(async () => (await (await caches.open('webllm/wasm')).keys())
                                         .map(r => r.url))()""")
    assert cached == [folder + "libs/tiny-q4f32_1-webgpu.wasm"]
    # ...and the engine took them: instantiating the stand-in's empty module is what failed.
    [pane] = pane_states(page)
    assert pane["state"] == "error", pane
    assert pane["status"].startswith("The engine could not load tiny-q4f32_1:")
    page.shot("engine-constructed")


def test_a_tampered_library_is_refused_before_the_engine_starts(browser: Browser, server) -> None:  # noqa: ANN001
    base, _ = server
    page = open_app(browser, base, "?a=tampered-q4f32_1")
    page.click(selector="#load")
    page.wait_for(SETTLED, 30000)
    [pane] = pane_states(page)
    assert pane["state"] == "refused"
    assert pane["status"].startswith("Refusing to load tampered-q4f32_1: the model library")
    assert "does not match the hash its build recorded" in pane["status"]
    assert base + "worker.js" not in requested(page)
    page.shot("tampered-refused")


def test_a_model_built_for_another_webllm_is_refused(browser: Browser, server) -> None:  # noqa: ANN001
    base, _ = server
    page = open_app(browser, base, "?a=oldrt-q4f32_1")
    [pane] = pane_states(page)
    pinned = load_lock().webllm_version
    assert pane["state"] == "refused"
    assert f"built for web-llm 0.2.78, but this app runs web-llm {pinned}" in pane["status"]
    assert page.eval(js="document.getElementById('load').disabled") is True
    page.shot("version-refused")


def test_compare_mode_shows_two_panes_with_one_prompt_and_decoding(
        browser: Browser, server) -> None:  # noqa: ANN001
    base, _ = server
    page = open_app(browser, base, "?compare=1&a=tiny-q4f32_1&b=tiny-ft-q4f32_1")
    panes = pane_states(page)
    assert [p["id"] for p in panes] == ["tiny-q4f32_1", "tiny-ft-q4f32_1"]
    assert [p["state"] for p in panes] == ["idle", "idle"]
    titles = page.eval(js="[...document.querySelectorAll('.pane-title')].map(t => t.innerText)")
    base_model = FINETUNE["base_model"]
    assert titles == ["A: tiny-q4f32_1", f"B: tiny-ft-q4f32_1 — fine-tuned from {base_model}"]
    # One set of settings for both panes: the fine-tune's training prompt, the build's sampling.
    assert value(page, "system-prompt") == FINETUNE["system_prompt"]
    assert (value(page, "temperature"), value(page, "top-p")) == ("0.6", "0.9")
    page.shot("compare")


def test_models_from_config_urls_instead_of_the_index(browser: Browser, server) -> None:  # noqa: ANN001
    base, _ = server
    config = "/models/tiny-ft/resolve/main/webllm-app-config.json"
    page = open_app(browser, base, f"?config={config}")
    assert [p["id"] for p in pane_states(page)] == ["tiny-ft-q4f32_1"]
    assert base + "models/index.json" not in requested(page)
    assert page.text("#notice") == ""
