"""Shared fixtures: tiny local models and the locally made Debian base image.

Docker and browser tests never skip silently in CI (CI=true): a missing engine there is a failure.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib.util
import os
import secrets
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from browser.harness import Browser, browser_missing
from standin.image import ensure_standin_image, standin_toolchain
from tinymodels import make_tiny_model

from webslm.files import sha256_bytes
from webslm.provenance import hash_files, list_files


def gpu_present() -> bool:
    """What the GPU tests' skip marks ask (torch.cuda.is_available()); False without torch."""
    try:  # the suite also runs where the finetune extra (torch) is not installed
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# Without a GPU, Triton kernels (webslm.fusedlora) run in Triton's CPU interpreter. Triton reads
# this when a kernel is defined, so it is set before any test imports one.
if not gpu_present():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_TINY = REPO_ROOT / "tests" / "fixtures" / "real-tiny"  # real MLC-LLM output: see its README
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(condition: bool, reason: str) -> None:
    """Skip on a developer machine without the component; fail in CI, where it must exist."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI must provide it: see .ci/setup)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_engine():
    """A connected Docker SDK client to the real engine."""
    from webslm.errors import MissingEnvironment
    from webslm.toolchain import docker_client

    try:
        client = docker_client()
    except MissingEnvironment as error:
        require(False, f"no Docker engine: {error.line()}")
    return client


@pytest.fixture(scope="session")
def live_base() -> Any:
    """The lock's base recipe over the live Debian mirror (snapshot.debian.org is unreachable
    here): the product's mmdebstrap path with only the archive URLs swapped."""
    from webslm.baseimage import LIVE_MIRROR
    from webslm.toolchain import load_lock

    return load_lock().base.with_archives(*LIVE_MIRROR)


@pytest.fixture(scope="session")
def debian_base_image(docker_engine, live_base) -> str:
    """Tag of the base image made by mmdebstrap from the live mirror (made once, cached by tag)."""
    from webslm.baseimage import ensure_base_image
    from webslm.cache import default_cache_dir

    return ensure_base_image(docker_engine, live_base, default_cache_dir())


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 model folder; read-only for tests (copy before changing it)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-qwen2") / "model", "qwen2")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random model of every preset architecture, keyed by HF model_type."""
    from tinymodels import ARCHITECTURES

    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: make_tiny_model(root / arch, arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def standin_image(docker_engine, debian_base_image: str) -> str:
    """The TEST STAND-IN toolchain image (tests/standin), built once and cached by tag."""
    return ensure_standin_image(docker_engine, debian_base_image)


@pytest.fixture()
def standin(standin_image: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The CLI's toolchain is the stand-in; the cache lives in this test's folder."""
    toolchain = standin_toolchain(standin_image)
    monkeypatch.setattr("webslm.toolchain.current_toolchain", lambda: toolchain)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return toolchain


@pytest.fixture(scope="session")
def standin_dist(standin_image: str, tiny_qwen2: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One faithful stand-in build of the tiny model named `tiny` (read-only: copy to change)."""
    from webslm.pipeline import BuildOptions, build_model
    from webslm.spec import resolve_spec

    out = tmp_path_factory.mktemp("standin-dist")
    options = BuildOptions(out=out / "dist", toolchain=standin_toolchain(standin_image),
                           cache_dir=out / "cache", show_progress=False)
    return build_model(resolve_spec(model=str(tiny_qwen2), name="tiny"), options).dist


def load_script(path: Path) -> ModuleType:
    """A Python file outside the package (tasks.py, a bench, a CI script) imported as a module
    named after it, registered in sys.modules as an import would (dataclasses look there)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tasks_namespace() -> Any:
    """tasks.py's Invoke collection, loaded the way the `invoke` program loads it."""
    from invoke import Collection

    return Collection.from_module(load_script(REPO_ROOT / "tasks.py"))


class Watcher(threading.Thread):
    """A thread that presses Ctrl-C once a condition holds; `fired` is when (time.monotonic())."""

    fired: float | None = None
    error: str | None = None  # the last exception the condition raised (it is asked again)

    def report(self) -> str:
        """What the watcher did, for a failing test's message."""
        return f"watcher fired at {self.fired}, last error in its condition: {self.error}"


def interrupt_when(ready: Callable[[], bool], within: float = 300,
                   signum: int = signal.SIGINT) -> Watcher:
    """A started watcher thread that presses Ctrl-C (SIGINT to this process; or sends `signum`,
    e.g. SIGTERM as CI cancellation does) once `ready()`.

    It waits up to `within` seconds and asks again when `ready()` raises (a Docker listing can
    fail while containers come and go; a dead watcher would let the command run on). Tests time
    the command from `fired`, not from its start (`seconds_after_firing`).

    A pytest started in the background of a shell (`cmd &`, nohup) inherits SIGINT ignored, and
    Python then keeps it ignored: Ctrl-C there is meant to do nothing, and did (three interrupted
    builds ran their 120 s in such a clean-clone run). A test that presses Ctrl-C stands for a
    terminal, so it puts Python's own handler back first (call this from the main thread).
    """
    if signum == signal.SIGINT:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def watch() -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                now = ready()
            except Exception as error:  # noqa: BLE001 - kept for the report, then asked again
                watcher.error = repr(error)
                now = False
            if now:
                watcher.fired = time.monotonic()
                os.kill(os.getpid(), signum)
                return
            time.sleep(0.1)

    watcher = Watcher(target=watch, daemon=True)
    watcher.start()
    return watcher


def seconds_after_firing(watcher: Watcher) -> float:
    """How long the interrupted command went on after the watcher pressed Ctrl-C."""
    assert watcher.fired is not None, watcher.report()
    return time.monotonic() - watcher.fired


def digests(folder: Path) -> dict[str, str]:
    """Every file under a folder and its sha256 (what "untouched" and "the same bytes" compare)."""
    return hash_files(folder, list_files(folder))


@pytest.fixture(scope="session", autouse=True)
def real_fixture_stays_unchanged() -> Iterator[None]:
    """Tests read the committed real-tiny fixture in place; one that changes a file must copy it
    first (writable_copy), or the next run compares against what the test wrote."""
    before = digests(REAL_TINY)
    yield
    assert digests(REAL_TINY) == before, f"a test changed the committed fixture {REAL_TINY}"


def unique_name(prefix: str) -> str:
    """A package name no other build on this shared engine uses (containers are labelled by it)."""
    return f"{prefix}-{secrets.token_hex(4)}"


def containers_of(engine: Any, model_id: str) -> list[Any]:
    return engine.containers.list(all=True, filters={"label": f"webslm.model_id={model_id}"})


def running(engine: Any, filters: dict[str, str]) -> list[Any]:
    """The running containers that match, listed sparse: without inspecting each one, which a
    finishing stage can remove in between (a 404 that would kill a watcher thread)."""
    return engine.containers.list(filters=filters, sparse=True)


def running_stages(engine: Any, model_id: str) -> set[str]:
    return {c.attrs["Labels"]["webslm.stage"]  # a sparse listing's labels: no inspect
            for c in running(engine, {"label": f"webslm.model_id={model_id}"})}


def copy_model(source: Path, target: Path) -> Path:
    """A changeable copy of a (read-only) tiny model folder."""
    shutil.copytree(source, target)
    return target


def writable_copy(dist: Path, target: Path) -> Path:
    """A copy of a dist folder whose files can be changed (cached files are read-only)."""
    shutil.copytree(dist, target)
    for path in target.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return target


def write_hub_repo(cache: Path, repo_id: str, files: dict[str, bytes], commit: str) -> Path:
    """A model repo laid out as huggingface_hub caches it (blobs, refs/main, snapshot symlinks,
    nested paths such as libs/ included); returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir(exist_ok=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / sha256_bytes(data)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def write_hub_cache(cache: Path, repo_id: str, model: Path, commit: str) -> Path:
    """A local model folder cached as the Hub snapshot `repo_id` at `commit`."""
    files = {p.relative_to(model).as_posix(): p.read_bytes()
             for p in sorted(model.rglob("*")) if p.is_file()}
    return write_hub_repo(cache, repo_id, files, commit)


@pytest.fixture()
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """huggingface_hub in offline mode over an empty cache in this test's folder."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def end_headers(self) -> None:
        """Readable from any origin, like the Hub's resolve URLs (a web page fetches them)."""
        self.send_header("Access-Control-Allow-Origin", "*")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Keep the test output clean."""


@contextlib.contextmanager
def http_server(root: Path) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving `root`; yields its base URL."""
    with serving(functools.partial(_QuietHandler, directory=str(root))) as url:
        yield url


@contextlib.contextmanager
def serving(handler: Any) -> Iterator[str]:
    """A real threading HTTP server on 127.0.0.1 answering with `handler`; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium driver (tests/browser/driver.mjs) per test module."""
    require(browser_missing() is None, f"browser tests need: {browser_missing()}")
    driver = Browser()
    yield driver
    driver.close()


@pytest.fixture()
def no_toolchain_needed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Bad input must stop before the toolchain is even looked up."""

    def refuse():
        raise AssertionError("the toolchain was consulted for a build that should have stopped")

    monkeypatch.setattr("webslm.toolchain.current_toolchain", refuse)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
