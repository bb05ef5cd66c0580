"""The web client on a dist made by the real `webslm build` pipeline with the TEST STAND-IN
toolchain image (tests/standin/: real layout and AppConfig, a valid but empty wasm module), served
by `webslm serve` and loaded in headless Chromium on the SwiftShader WebGPU adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser.harness import Browser, browser_missing, open_app, running_server
from conftest import require
from standin.image import ensure_standin_image, standin_toolchain

from webslm.pipeline import BuildOptions, build_model
from webslm.serve import Site, ensure_web_bundle, find_models
from webslm.spec import resolve_spec

pytestmark = [pytest.mark.browser, pytest.mark.docker]


@pytest.fixture(scope="module")
def standin_dist(docker_engine, debian_base_image: str, tiny_qwen2: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(browser_missing() is None, f"browser tests need: {browser_missing()}")
    root = tmp_path_factory.mktemp("standin-web")
    toolchain = standin_toolchain(ensure_standin_image(docker_engine, debian_base_image))
    spec = resolve_spec(model=str(tiny_qwen2), name="tiny", quantization="q4f32_1",
                        system_prompt="Answer in one sentence.")
    options = BuildOptions(out=root / "dist", toolchain=toolchain, cache_dir=root / "cache",
                           show_progress=False)
    return build_model(spec, options).dist.parent


def test_a_standin_build_is_handed_to_the_engine_from_the_served_urls(
        standin_dist: Path, browser: Browser) -> None:
    site = Site(web=ensure_web_bundle(), models=find_models([standin_dist]))
    with running_server(site) as (base, access_log):
        page = open_app(browser, base)
        assert page.eval(js="document.getElementById('system-prompt').value") == \
            "Answer in one sentence."
        page.click(selector="#load")
        page.wait_for("['refused','error','ready'].includes("
                      "document.querySelector('.pane').dataset.state)", 60000)
        state = page.eval(js="document.querySelector('.pane').dataset.state")
        status = page.text(".pane .status")
        page.shot("standin-build")
        served = "\n".join(access_log)
    # The build's integrity hashes (library, configs, tokenizer, every weight shard) hold, so the
    # engine was constructed and took the library: starting the stand-in's empty module failed.
    assert state == "error" and status.startswith(
        "Could not load tiny-q4f32_1: the model library would not start in this browser")
    folder = "/models/tiny/resolve/main/"
    assert f'"GET {folder}mlc-chat-config.json' in served
    assert f'"GET {folder}libs/tiny-q4f32_1-webgpu.wasm' in served
    assert '"GET /worker.js' in served
