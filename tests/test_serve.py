"""`webslm serve`: URL layout, MIME types, ranges, cache headers, path safety, the command.

Requests go to a real server on 127.0.0.1 (a free port), each with a timeout.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser.fakedist import make_fake_dist
from browser.harness import running_server
from conftest import REPO_ROOT, require

from webslm.cli import main
from webslm.errors import BadInput, MissingEnvironment
from webslm.serve import (
    LONG_CACHE,
    NO_CACHE,
    ByteRange,
    RangeNotSatisfiable,
    ServedModel,
    Site,
    bundle_is_stale,
    ensure_web_bundle,
    find_models,
    requested_range,
)

TIMEOUT_S = 10
WASM = "/models/tiny/resolve/main/libs/tiny-q4f32_1-webgpu.wasm"
SHARD = "/models/tiny/resolve/main/params_shard_0.bin"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    out = root / "dist"
    make_fake_dist(out, "tiny")
    make_fake_dist(out, "tiny16", "q4f16_1")
    (out / ".tiny.tmp").mkdir()  # a build's staging folder is not a model
    (root / "secret.txt").write_text("outside")
    os.symlink(root / "secret.txt", out / "tiny" / "leak.txt")
    return out


@pytest.fixture(scope="module")
def base(dist: Path) -> Iterator[str]:
    web = dist.parent / "web"
    web.mkdir()
    (web / "index.html").write_text("<!doctype html><title>app</title>")
    (web / "main.js").write_text("export {};\n")
    with running_server(Site(web=web, models=find_models([dist]))) as (url, _):
        yield url


def request(base: str, path: str, method: str = "GET",
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    host, port = base.removeprefix("http://").rstrip("/").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_models_are_found_in_a_dist_folder_or_named_directly(dist: Path) -> None:
    assert find_models([dist]) == (ServedModel("tiny", dist / "tiny"),
                                   ServedModel("tiny16", dist / "tiny16"))
    assert find_models([dist / "tiny16"]) == (ServedModel("tiny16", dist / "tiny16"),)


def test_folders_without_models_and_clashing_names_are_refused(dist: Path,
                                                               tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="is not a folder"):
        find_models([tmp_path / "nowhere"])
    with pytest.raises(BadInput, match="holds no model"):
        find_models([tmp_path])
    with pytest.raises(BadInput, match="two models are named 'tiny'"):
        find_models([dist, dist / "tiny"])


def test_the_index_lists_every_models_app_config(base: str) -> None:
    status, headers, body = request(base, "/models/index.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == NO_CACHE
    assert json.loads(body) == {"models": [
        "/models/tiny/resolve/main/webllm-app-config.json",
        "/models/tiny16/resolve/main/webllm-app-config.json"]}


@pytest.mark.parametrize(("path", "mime", "cache"), [
    ("/", "text/html; charset=utf-8", NO_CACHE),
    ("/main.js", "text/javascript; charset=utf-8", NO_CACHE),
    (WASM, "application/wasm", LONG_CACHE),
    (SHARD, "application/octet-stream", LONG_CACHE),
    ("/models/tiny/resolve/main/mlc-chat-config.json", "application/json", NO_CACHE),
    ("/models/tiny/resolve/main/webllm-app-config.json", "application/json", NO_CACHE),
    ("/models/tiny/resolve/main/tokenizer.json", "application/json", NO_CACHE),
])
def test_files_are_served_with_their_type_and_cache_policy(base: str, dist: Path, path: str,
                                                           mime: str, cache: str) -> None:
    status, headers, body = request(base, path)
    assert status == 200
    assert headers["Content-Type"] == mime and headers["Cache-Control"] == cache
    assert headers["Accept-Ranges"] == "bytes"
    if path.startswith("/models/"):
        assert body == (dist / "tiny" / path.split("/resolve/main/")[1]).read_bytes()
        assert headers["Access-Control-Allow-Origin"] == "*"


def test_head_sends_the_headers_without_a_body(base: str, dist: Path) -> None:
    status, headers, body = request(base, SHARD, "HEAD")
    assert status == 200 and body == b""
    assert int(headers["Content-Length"]) == (dist / "tiny" / "params_shard_0.bin").stat().st_size


@pytest.mark.parametrize(("header", "start", "end"), [
    ("bytes=0-9", 0, 9), ("bytes=100-", 100, None), ("bytes=-16", -16, None),
    ("bytes=50-999999999", 50, None),
])
def test_range_requests_get_206_and_exactly_those_bytes(base: str, dist: Path, header: str,
                                                        start: int, end: int | None) -> None:
    whole = (dist / "tiny" / "params_shard_0.bin").read_bytes()
    expected = whole[start:end + 1] if end is not None else whole[start:]
    status, headers, body = request(base, SHARD, headers={"Range": header})
    assert status == 206 and body == expected
    first = start % len(whole)
    assert headers["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/{len(whole)}"
    assert int(headers["Content-Length"]) == len(expected)


def test_a_range_past_the_end_gets_416_with_the_size(base: str, dist: Path) -> None:
    size = (dist / "tiny" / "params_shard_0.bin").stat().st_size
    status, headers, _ = request(base, SHARD, headers={"Range": f"bytes={size}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{size}"


def test_several_ranges_or_a_malformed_range_get_the_whole_file(base: str, dist: Path) -> None:
    whole = (dist / "tiny" / "params_shard_0.bin").read_bytes()
    for header in ("bytes=0-1,5-6", "bytes=9-2", "pages=1-2", "bytes=x-1"):
        status, _, body = request(base, SHARD, headers={"Range": header})
        assert (status, body) == (200, whole), header


def test_requested_range_rules() -> None:
    assert requested_range(None, 10) is None
    assert requested_range("bytes=2-4", 10) == ByteRange(2, 4)
    assert requested_range("bytes=-20", 10) == ByteRange(0, 9)
    assert ByteRange(2, 4).length == 3
    for unsatisfiable, size in (("bytes=10-", 10), ("bytes=-0", 10), ("bytes=-5", 0)):
        with pytest.raises(RangeNotSatisfiable):
            requested_range(unsatisfiable, size)


@pytest.mark.parametrize("path", [
    "/models/tiny/resolve/main/../../../secret.txt",
    "/models/tiny/resolve/main/%2e%2e/%2e%2e/%2e%2e/secret.txt",
    "/models/tiny/resolve/main/libs/..%2f..%2f..%2fsecret.txt",
    "/models/tiny/resolve/main/leak.txt",  # a symbolic link pointing outside the model
    "/models/tiny/resolve/main/",
    "/models/tiny/resolve/main/libs",
    "/models/tiny/params_shard_0.bin",  # not under resolve/main/
    "/models/.tiny.tmp/resolve/main/x",
    "/models/nope/resolve/main/webllm-app-config.json",
    "/..%2fsecret.txt",
    "/%2e%2e/serve/secret.txt",
    "/.hidden",
])
def test_nothing_outside_the_served_folders_is_reachable(base: str, path: str) -> None:
    status, _, body = request(base, path)
    assert status == 404 and b"outside" not in body


def test_other_methods_are_not_implemented(base: str) -> None:
    assert request(base, "/", "POST")[0] == 501


def web_copy(tmp_path: Path, *, with_modules: bool = True) -> Path:
    """web/ sources beside a copy of the lock (node_modules linked when asked)."""
    web = tmp_path / "web"
    shutil.copytree(REPO_ROOT / "web" / "src", web / "src")
    for name in ("index.html", "check.html", "build.mjs", "package.json", "package-lock.json"):
        shutil.copy2(REPO_ROOT / "web" / name, web / name)
    if with_modules:
        os.symlink(REPO_ROOT / "web" / "node_modules", web / "node_modules")
    (tmp_path / "docker").mkdir()
    shutil.copy2(REPO_ROOT / "docker" / "toolchain.lock.json", tmp_path / "docker")
    return web


def test_the_web_client_is_built_when_missing_or_stale(tmp_path: Path) -> None:
    require((REPO_ROOT / "web" / "node_modules").is_dir(), "web/node_modules is missing")
    web = web_copy(tmp_path)
    assert bundle_is_stale(web)
    assert ensure_web_bundle(web) == web / "dist"
    stamp = web / "dist" / "build-info.json"
    built = stamp.stat().st_mtime_ns
    assert not bundle_is_stale(web)
    ensure_web_bundle(web)
    assert stamp.stat().st_mtime_ns == built  # fresh: not rebuilt
    later = time.time() + 5
    os.utime(web / "src" / "main.js", (later, later))
    assert bundle_is_stale(web)
    ensure_web_bundle(web)
    assert stamp.stat().st_mtime_ns != built


def test_without_node_modules_it_says_the_one_build_command(tmp_path: Path) -> None:
    web = web_copy(tmp_path, with_modules=False)
    with pytest.raises(MissingEnvironment) as raised:
        ensure_web_bundle(web)
    assert "npm ci --prefix web && npm run build --prefix web" in raised.value.line()


@pytest.mark.parametrize("spelling", ["positional", "--dist", "both"])
def test_the_serve_command_prints_the_url_and_serves(dist: Path, spelling: str) -> None:
    """`webslm serve DIST`, `webslm serve --dist DIST` (repeatable) and a mix serve the same."""
    require((REPO_ROOT / "web" / "node_modules").is_dir(), "web/node_modules is missing")
    dists = {"positional": [str(dist)], "--dist": ["--dist", str(dist / "tiny"), "--dist",
                                                   str(dist / "tiny16")],
             "both": [str(dist / "tiny"), "--dist", str(dist / "tiny16")]}[spelling]
    process = subprocess.Popen([sys.executable, "-m", "webslm", "serve", *dists, "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=REPO_ROOT)
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert line.startswith("webslm: serving tiny, tiny16 with the web client at http://127.0.0.1:")
        url = line.split(" at ")[1].split()[0]
        status, headers, body = request(url, "/")
        assert status == 200 and b'<script type="module" src="main.js">' in body
        assert request(url, WASM)[1]["Content-Type"] == "application/wasm"
    finally:
        process.terminate()
        process.wait(timeout=TIMEOUT_S)


def test_serving_a_folder_without_models_is_bad_input(tmp_path: Path) -> None:
    require((REPO_ROOT / "web" / "node_modules").is_dir(), "web/node_modules is missing")
    done = subprocess.run([sys.executable, "-m", "webslm", "serve", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"webslm: error: {tmp_path} holds no model (no webllm-app-config.json in it or its "
        "subfolders); build one with `invoke build --out <folder>` and serve that folder"]


@pytest.mark.parametrize("header", ["bytes=\u00b2-3", "bytes=0-\u00b9\u00b2", "bytes=\u00e9-",
                                    "bytes=1-" + "9" * 5000, "bytes=" + "9" * 5000 + "-"])
def test_odd_range_headers_get_an_answer_not_a_dropped_connection(base: str, dist: Path,
                                                                  header: str) -> None:
    whole = (dist / "tiny" / "params_shard_0.bin").read_bytes()
    status, headers, body = request(base, SHARD, headers={"Range": header})
    if header.endswith("-") and header[6].isascii():  # a start past any file's end
        assert status == 416 and headers["Content-Range"] == f"bytes */{len(whole)}"
    elif header.startswith("bytes=1-9"):
        assert status == 206 and body == whole[1:]
    else:
        assert (status, body) == (200, whole)


def test_long_names_and_symlink_loops_get_404(base: str, dist: Path) -> None:
    loop = dist / "tiny" / "loop"
    os.symlink("loop", loop)
    try:
        for path in ("/models/tiny/resolve/main/loop", "/models/tiny/resolve/main/loop/x",
                     "/models/tiny/resolve/main/" + "a" * 300, "/" + "b" * 300 + "/c"):
            assert request(base, path)[0] == 404, path
    finally:
        loop.unlink()


@pytest.mark.parametrize("flags, message, fix", [
    (["--port", "99999"], "--port 99999 is not a TCP port", "pass a port from 1 to 65535"),
    (["--port", "-1"], "--port -1 is not a TCP port", "pass a port from 1 to 65535"),
    (["--host", "999.1.1.1", "--port", "0"], "cannot listen on 999.1.1.1:0", "pass a --host"),
])
def test_bad_listen_addresses_are_one_line(dist: Path, flags: list[str], message: str, fix: str,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("webslm.serve.ensure_web_bundle", lambda: dist.parent / "web")
    assert main(["serve", str(dist), *flags]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error and fix in error
    if "--host" in flags:
        assert "--port" not in error
