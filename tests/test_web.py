"""The web client's build: its web-llm pin comes from the toolchain lock, and its pure logic
(integrity, guards, catalog, sentence budget) passes its node unit tests (web/test/)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REAL_TINY, REPO_ROOT, require

from webslm import webllm
from webslm.files import sha256_file
from webslm.provenance import load_provenance, sri
from webslm.toolchain import load_lock

WEB = REPO_ROOT / "web"
WEB_SOURCES = ("build.mjs", "package.json", "index.html", "check.html", "src")


def node_ready() -> None:
    require(shutil.which("node") is not None, "node is not installed")
    require((WEB / "node_modules").is_dir(), "web/node_modules is missing (npm ci --prefix web)")


def test_package_json_names_exactly_the_locked_webllm() -> None:
    lock = load_lock()
    package = json.loads((WEB / "package.json").read_text())
    assert package["dependencies"]["@mlc-ai/web-llm"] == lock.webllm_version
    locked = json.loads((WEB / "package-lock.json").read_text())
    assert locked["packages"]["node_modules/@mlc-ai/web-llm"]["version"] == lock.webllm_version


def test_no_source_fetches_code_from_a_cdn_at_run_time() -> None:
    text = "\n".join(p.read_text() for p in [WEB / "index.html", *sorted((WEB / "src").iterdir())])
    for cdn in ("esm.run", "jsdelivr", "unpkg", "esm.sh", "https://"):
        assert cdn not in text


def test_the_pure_client_logic_passes_its_node_tests() -> None:
    node_ready()
    tests = sorted(str(p.relative_to(WEB)) for p in (WEB / "test").glob("*.test.js"))
    done = subprocess.run(["node", "--test", *tests], cwd=WEB, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout


def test_the_client_falls_back_to_the_builds_sampling_defaults() -> None:
    """A record without overrides decodes as a webslm build would have recorded."""
    node_ready()
    done = subprocess.run(["node", "--input-type=module", "-e", "import { DEFAULT_SAMPLING } from "
                           "'./src/models.js'; console.log(JSON.stringify(DEFAULT_SAMPLING));"],
                          cwd=WEB, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout) == {"temperature": webllm.DEFAULT_TEMPERATURE,
                                       "top_p": webllm.DEFAULT_TOP_P}


def copy_web(target: Path, webllm_pin: str) -> Path:
    """web/ sources (node_modules linked) beside a lock that pins webllm_pin."""
    web = target / "web"
    web.mkdir(parents=True)
    for name in WEB_SOURCES:
        source = WEB / name
        if source.is_dir():
            shutil.copytree(source, web / name)
        else:
            shutil.copy2(source, web / name)
    os.symlink(WEB / "node_modules", web / "node_modules")
    lock = json.loads((REPO_ROOT / "docker" / "toolchain.lock.json").read_text())
    lock["webllm"]["version"] = webllm_pin
    (target / "docker").mkdir()
    (target / "docker" / "toolchain.lock.json").write_text(json.dumps(lock))
    return web


def build(web: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["node", "build.mjs"], cwd=web, capture_output=True, text=True,
                          timeout=300, check=False)


def test_the_bundle_embeds_the_locked_webllm_version(tmp_path: Path) -> None:
    node_ready()
    pinned = load_lock().webllm_version
    web = copy_web(tmp_path, pinned)
    done = build(web)
    assert done.returncode == 0, done.stderr
    assert json.loads((web / "dist" / "build-info.json").read_text()) == {"webllm_version": pinned}
    bundle = "\n".join(p.read_text() for p in (web / "dist").glob("*.js"))
    assert "__WEBLLM_VERSION__" not in bundle and f'"{pinned}"' in bundle
    assert {"index.html", "main.js", "worker.js", "style.css"} <= {
        p.name for p in (web / "dist").iterdir()}


@pytest.mark.parametrize("change", ["lock", "package.json"])
def test_the_build_refuses_a_webllm_that_differs_from_the_lock(tmp_path: Path,
                                                                change: str) -> None:
    node_ready()
    pinned = load_lock().webllm_version
    web = copy_web(tmp_path, "0.2.80" if change == "lock" else pinned)
    if change == "package.json":
        package = json.loads((web / "package.json").read_text())
        package["dependencies"]["@mlc-ai/web-llm"] = "^0.2.79"
        (web / "package.json").write_text(json.dumps(package))
    done = build(web)
    assert done.returncode == 1
    assert "web build failed: @mlc-ai/web-llm: the toolchain lock pins" in done.stderr
    assert "npm ci --prefix web" in done.stderr
    assert not (web / "dist").exists()
    assert not list(web.glob(".dist-*"))  # no half-written output


def test_a_real_builds_weight_digests_match_its_files_and_provenance() -> None:
    """The browser checks each shard against the AppConfig's `webslm.weights`: in what the real
    toolchain built, those digests are the files' own and the provenance's."""
    for folder in ("dist-q4f32_1", "dist-q4f16_1"):
        dist = REAL_TINY / folder
        require(dist.is_dir(), f"the real-tiny fixture is missing ({dist})")
        [record] = json.loads((dist / "webllm-app-config.json").read_text())["model_list"]
        subjects = load_provenance(dist / "provenance.json").subjects
        weights = ("ndarray-cache.json", "params_shard_0.bin")
        assert record["webslm"]["weights"] == {name: sri(sha256_file(dist / name))
                                               for name in weights}
        assert record["webslm"]["weights"] == {name: sri(subjects[name]) for name in weights}
