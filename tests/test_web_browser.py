"""The web client in real headless Chromium (Debian's chromium, driven by npm playwright-core).

Models are TEST STAND-IN dist folders (tests/browser/fakedist.py: the real layout and AppConfig
record, fake weights, an empty wasm module), served by the real `webslm serve` server. Without the
real toolchain no model can generate, so these tests stop where the engine instantiates the
library; everything before that (guards, integrity, engine construction, requests) is real.
Published models are served by a TEST STAND-IN for the Hub's resolve URLs (conftest.http_server),
in the layout `invoke publish` writes: the AppConfig on `main` names `resolve/<commit>/`; there the
engine is the scripted stand-in (scripted_worker.js), so loading can finish.
Screenshots go to test-artifacts/web/.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser.fakedist import FINETUNE, make_fake_dist
from browser.harness import Browser, Page, browser_missing, open_app, running_server, scripted_web
from conftest import http_server, require

from webslm.publish import resolve_url, rewrite_app_config
from webslm.serve import Site, ensure_web_bundle, find_models
from webslm.toolchain import load_lock
from webslm.webllm import AppConfig, render_app_config

pytestmark = pytest.mark.browser

SETTLED = "['refused','error','ready'].includes(document.querySelector('.pane')?.dataset.state)"
COMMIT = "5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a99887766"


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
    vintage = make_fake_dist(dist, "vintage")  # as webslm wrote it before recording webslm.weights
    config = json.loads((vintage / "webllm-app-config.json").read_text())
    del config["model_list"][0]["webslm"]["weights"]
    (vintage / "webllm-app-config.json").write_text(json.dumps(config))
    return Site(web=ensure_web_bundle(), models=find_models([dist]))


@pytest.fixture(scope="module")
def server(site: Site) -> Iterator[tuple[str, list[str]]]:
    with running_server(site) as served:
        yield served


def pane_states(page: Page) -> list[dict[str, str]]:
    return page.eval(js="""[...document.querySelectorAll('.pane')].map(p => ({
        id: p.dataset.modelId, state: p.dataset.state,
        status: p.querySelector('.status').innerText}))""")


def value(page: Page, element_id: str) -> str:
    return page.eval(js=f"document.getElementById({json.dumps(element_id)}).value")


def requested(page: Page) -> list[str]:
    """URLs the page fetched (GET; the picker's size look-ups are HEAD requests, no download)."""
    return [r["url"] for r in page.log()["requests"] if r["method"] == "GET"]


def load_settled(browser: Browser, url: str) -> tuple[Page, dict[str, str]]:
    """The page at url after pressing Load, once its one pane has settled, and that pane."""
    page = open_app(browser, url)
    page.click(selector="#load")
    page.wait_for(SETTLED, 30000)
    [pane] = pane_states(page)
    return page, pane


def test_the_page_loads_without_console_errors(browser: Browser, server) -> None:
    base, _ = server
    page = open_app(browser, base)
    log = page.log()
    assert log["errors"] == []
    assert [m for m in log["console"] if m["type"] == "error"] == []
    options = page.eval(js="[...document.querySelectorAll('#model-a option')].map(o => o.value)")
    assert options == ["oldrt-q4f32_1", "tampered-q4f32_1", "tiny-q4f32_1", "tiny-ft-q4f32_1",
                       "tiny16-q4f16_1", "vintage-q4f32_1"]
    assert "Try one of these" in page.text(".empty-state")
    # oldrt (first) is refused, so the first model that can run is preselected instead.
    assert page.eval(js="document.getElementById('model-a').value") == "tampered-q4f32_1"
    assert page.text("#download-size") == \
        "First load downloads ~0.1 MB once; after that it works offline."
    page.shot("page-loaded")


def test_without_webgpu_the_page_says_why_and_loads_nothing(browser: Browser, server) -> None:
    base, _ = server
    page = open_app(browser, base + "?a=tiny-q4f32_1", webgpu=False)
    assert "offers no WebGPU adapter" in page.text("#notice")
    assert "Chrome or Edge" in page.text("#notice")
    assert pane_states(page)[0]["state"] == "refused"
    assert page.eval(js="document.getElementById('load').disabled") is True
    assert not [u for u in requested(page) if u.endswith(".wasm")]
    log = page.log()
    assert log["errors"] == [] and [m for m in log["console"] if m["type"] == "error"] == []
    page.shot("no-webgpu")


def test_an_f16_model_is_refused_on_an_adapter_without_shader_f16(browser: Browser, server) -> None:
    base, _ = server
    page = open_app(browser, base + "?a=tiny16-q4f16_1")
    assert page.eval(js="document.body.dataset.webgpu") == "yes"  # SwiftShader adapter
    [pane] = pane_states(page)
    assert pane["state"] == "refused"
    assert "needs the WebGPU feature shader-f16" in pane["status"]
    assert "q4f32_1" in pane["status"]
    assert not [u for u in requested(page) if u.endswith(".wasm")]
    page.shot("f16-refused")


def test_the_engine_gets_the_appconfig_and_fetches_from_the_served_urls(
        browser: Browser, server) -> None:
    base, access_log = server
    page = open_app(browser, base + "?a=tiny-q4f32_1")
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
    # ...so are the verified weights (manifest and shard), where web-llm's NDArray cache reads them.
    weights = page.eval(js="""(async () => (await (await caches.open('webllm/model')).keys())
                                          .map(r => r.url).sort())()""")
    assert folder + "ndarray-cache.json" in weights and folder + "params_shard_0.bin" in weights
    # ...and the engine took them: instantiating the stand-in's empty module is what failed,
    # said in words with what to do, the raw error kept as a detail; no Retry, which would load
    # the same library again.
    [pane] = pane_states(page)
    assert pane["state"] == "error", pane
    assert pane["status"].startswith(
        "Could not load tiny-q4f32_1: the model library would not start")
    assert pane["status"].endswith("Rebuild the model (invoke build), then reload this page.")
    assert page.text(".failure-headline") == "The model library would not start"
    assert page.eval(js="getComputedStyle(document.querySelector('.retry')).display") == "none"
    assert page.eval(js="document.querySelector('.failure').hidden") is False
    assert "TypeError" in page.eval(js="document.querySelector('.failure-detail').textContent")
    page.shot("engine-constructed")


def test_a_tampered_library_is_refused_before_the_engine_starts(browser: Browser, server) -> None:
    base, _ = server
    page, pane = load_settled(browser, base + "?a=tampered-q4f32_1")
    assert pane["state"] == "refused"
    assert pane["status"].startswith("Refusing to load tampered-q4f32_1: the model library")
    assert "does not match the hash its build recorded" in pane["status"]
    assert base + "worker.js" not in requested(page)
    page.shot("tampered-refused")


def test_a_model_an_older_webslm_built_says_to_rebuild_it_not_retry(browser: Browser,
                                                                    server) -> None:
    base, _ = server
    page, pane = load_settled(browser, base + "?a=vintage-q4f32_1")
    assert pane["state"] == "error"
    assert page.text(".failure-headline") == "Built by an older webslm"
    assert pane["status"].endswith(
        "Rebuild it with the current webslm (invoke build), then reload this page.")
    assert page.eval(js="getComputedStyle(document.querySelector('.retry')).display") == "none"
    page.shot("older-build")


def test_a_model_built_for_another_webllm_is_refused(browser: Browser, server) -> None:
    base, _ = server
    page = open_app(browser, base + "?a=oldrt-q4f32_1")
    [pane] = pane_states(page)
    pinned = load_lock().webllm_version
    assert pane["state"] == "refused"
    assert f"built for web-llm 0.2.78, but this app runs web-llm {pinned}" in pane["status"]
    assert page.eval(js="document.getElementById('load').disabled") is True
    page.shot("version-refused")


def test_compare_mode_shows_two_panes_with_one_prompt_and_decoding(
        browser: Browser, server) -> None:
    base, _ = server
    page = open_app(browser, base + "?compare=1&a=tiny-q4f32_1&b=tiny-ft-q4f32_1")
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


def test_models_from_config_urls_instead_of_the_index(browser: Browser, server) -> None:
    base, _ = server
    config = "/models/tiny-ft/resolve/main/webllm-app-config.json"
    page = open_app(browser, base + f"?config={config}")
    assert [p["id"] for p in pane_states(page)] == ["tiny-ft-q4f32_1"]
    assert base + "models/index.json" not in requested(page)
    assert page.text("#notice") == ""


# ---------------------------------------------------------------------------- published models


def publish_layout(hub: Path, dist: Path, repo: str, *, main_changes: bool) -> str:
    """dist laid out as `invoke publish` leaves it on the Hub; returns the AppConfig URL path.

    resolve/<COMMIT>/ holds the package; resolve/main/ holds the AppConfig pinned to COMMIT (and,
    when main_changes, a shard changed on main after publishing, which must never load).
    """
    pinned = hub / repo / "resolve" / COMMIT
    shutil.copytree(dist, pinned)
    main = hub / repo / "resolve" / "main"
    shutil.copytree(dist, main)
    if main_changes:
        (main / "params_shard_1.bin").write_bytes(b"changed on main" * 1000)
    return f"{repo}/resolve/main/webllm-app-config.json"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    root = tmp_path_factory.mktemp("hub")
    made = tmp_path_factory.mktemp("published")
    configs = {}
    for name, tamper in (("pub", False), ("evil", True)):
        dist = make_fake_dist(made, name, shards=3, shard_bytes=48 * 1024)
        repo = f"org/{name}"
        configs[name] = publish_layout(root, dist, repo, main_changes=not tamper)
        if tamper:
            shard = root / repo / "resolve" / COMMIT / "params_shard_1.bin"
            data = bytearray(shard.read_bytes())
            data[1000] ^= 0xFF
            shard.write_bytes(bytes(data))
    with http_server(root) as endpoint:
        base = endpoint + "/"
        for name, path in configs.items():
            config = root / path
            app_config = json.loads(config.read_text())
            pinned_url = resolve_url(endpoint, f"org/{name}", COMMIT)
            config.write_text(render_app_config(
                rewrite_app_config(AppConfig.from_json(app_config), pinned_url)))
        yield base, {name: base + path for name, path in configs.items()}


@pytest.fixture(scope="module")
def scripted_server(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    web = scripted_web(site.web, tmp_path_factory.mktemp("scripted"))
    with running_server(Site(web=web, models=())) as (base, _):
        yield base


def cached_urls(page: Page, cache: str) -> list[str]:
    return page.eval(js=f"""(async () => (await (await caches.open({json.dumps(cache)})).keys())
                                         .map(r => r.url).sort())()""")


def test_a_published_model_loads_from_its_commit_not_from_main(
        browser: Browser, scripted_server: str, hub) -> None:
    base, configs = hub
    page, pane = load_settled(browser, f"{scripted_server}?config={configs['pub']}")
    assert pane["state"] == "ready", pane
    assert pane["status"].startswith("Ready. All 0.1 MB of weights match their recorded hashes")
    pinned = f"{base}org/pub/resolve/{COMMIT}/"
    urls = requested(page)
    shards = [u for u in urls if "params_shard_" in u]
    assert sorted(set(shards)) == [f"{pinned}params_shard_{i}.bin" for i in range(3)]
    assert not [u for u in urls
                if "/resolve/main/" in u and not u.endswith("webllm-app-config.json")]
    assert cached_urls(page, "webllm/model") == sorted(
        [f"{pinned}ndarray-cache.json", *(f"{pinned}params_shard_{i}.bin" for i in range(3)),
         f"{pinned}tokenizer.json", f"{pinned}tokenizer_config.json"])
    assert cached_urls(page, "webllm/wasm") == [f"{pinned}libs/pub-q4f32_1-webgpu.wasm"]
    # Its config came from another site's branch: the page says so, and what to open instead.
    note = page.text(".pin-note")
    assert note.startswith(
        f'This model\'s config is read from the branch "main" ({configs["pub"]})')
    assert "the share link `webslm publish` printed" in note
    page.shot("published-pinned")


def test_a_tampered_weight_shard_is_refused_and_never_cached(
        browser: Browser, scripted_server: str, hub) -> None:
    base, configs = hub
    page, pane = load_settled(browser, f"{scripted_server}?config={configs['evil']}")
    shard = f"{base}org/evil/resolve/{COMMIT}/params_shard_1.bin"
    assert pane["state"] == "refused", pane
    assert pane["status"].startswith(
        f"Refusing to load evil-q4f32_1: the weight shard params_shard_1.bin ({shard}) does not "
        "match the hash its build recorded")
    assert shard not in cached_urls(page, "webllm/model")
    assert scripted_server + "worker.js" not in requested(page)  # the engine never started
    assert pane["status"].endswith("Pick another model above; if you built this one, rebuild it "
                                   "(invoke build) and reload this page; if it was shared with "
                                   "you, ask for it to be published again.")
    page.shot("tampered-shard-refused")


def test_the_weights_check_shows_in_the_progress_bar(
        browser: Browser, scripted_server: str, hub) -> None:
    _, configs = hub
    page = open_app(browser, scripted_server + f"?config={configs['pub']}")
    # Every value the bar's attributes ever held, from the mutation records' old values (an
    # observer callback reading the live DOM would miss states set within one task).
    page.eval(js="""(() => {
        window.progressSeen = {"aria-valuetext": [], "aria-valuenow": []};
        new MutationObserver(records => {
            for (const r of records) window.progressSeen[r.attributeName].push(r.oldValue);
        }).observe(document.getElementById('panes'), {
            subtree: true, attributeOldValue: true,
            attributeFilter: ["aria-valuetext", "aria-valuenow"]});
    })()""")
    page.click(selector="#load")
    page.wait_for(SETTLED, 30000)
    seen = page.eval(js="""(() => {
        const bar = document.querySelector('.progress');
        const history = name => [...window.progressSeen[name], bar.getAttribute(name)];
        return {role: bar.getAttribute('role'), texts: history("aria-valuetext"),
                values: history("aria-valuenow")};
    })()""")
    texts = [text for text in seen["texts"] if text]
    assert any(t.startswith("Weights: 3 of 3 shards checked") for t in texts), texts[-5:]
    assert any(t.startswith("Weights: 1 of 3 shards checked") or
               t.startswith("Weights: 2 of 3 shards checked") for t in texts), texts
    assert seen["role"] == "progressbar"
    values = [int(v) for v in seen["values"] if v is not None]
    assert 0 < max(values) <= 100
