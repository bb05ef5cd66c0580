"""`webslm publish` through huggingface_hub's real client (HfApi), with only its HTTP transport
replaced by a STAND-IN HUB: an httpx2.MockTransport plugged in with huggingface_hub's own
`set_client_factory`, answering the endpoints the client calls (repo create, preupload, LFS batch,
upload and verify, README metadata validation, commit) as the Hub does, and recording them.

The stand-in checks what it is handed (payload shapes, the bearer token, LFS oids against the
uploaded bytes, the commit's parent) and keeps each commit's full file tree, so the tests can ask
what a browser would fetch at the URLs the published AppConfig names.

Xet storage is switched off (huggingface_hub's HF_HUB_DISABLE_XET): Xet uploads go through the
hf_xet extension's own HTTP stack, which no transport swap reaches; the LFS path is the protocol
the Hub still accepts and that huggingface_hub speaks over this client.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from huggingface_hub import constants
from huggingface_hub.utils._http import (
    default_client_factory,
    hf_request_event_hook,
    set_client_factory,
)
from test_publish import FAKE_TOKEN, REPO, make_dist

from webslm.cli import main
from webslm.errors import MissingEnvironment
from webslm.hubapi import push_folder
from webslm.provenance import APP_CONFIG_FILE, list_files

HUB = "https://huggingface.co"
LFS_STORAGE = "https://lfs-storage.stand-in.invalid"
LFS_SUFFIXES = (".bin", ".wasm", ".safetensors")


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Recorded:
    method: str
    url: str
    authorization: str | None
    body: bytes


@dataclass
class StandInHub:
    """Enough of the Hub's HTTP API for HfApi.create_repo and create_commit (LFS path)."""

    token: str
    fail: dict[str, int] = field(default_factory=dict)  # "METHOD path-regex" -> status
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)

    # -- plumbing

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        body = request.read()
        self.requests.append(Recorded(request.method, str(request.url),
                                      request.headers.get("authorization"), body))
        path = request.url.path
        for rule, status in self.fail.items():
            method, pattern = rule.split(" ", 1)
            if request.method == method and re.fullmatch(pattern, path):
                # A hostile server that echoes the credentials: they must still never surface.
                return self.error(status, "stand-in failure; Authorization was "
                                  f"{request.headers.get('authorization')}")
        if str(request.url).startswith(LFS_STORAGE):
            return self.lfs_put(request, body)
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return self.error(401, "Invalid credentials in Authorization header")
        routes = [
            ("POST", r"/api/repos/create", self.create_repo),
            ("POST", r"/api/validate-yaml", self.validate_yaml),
            ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)",
             self.preupload),
            ("POST", r"/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", self.lfs_batch),
            ("POST", r"/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/verify", self.lfs_verify),
            ("POST", r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)", self.commit),
            ("GET", r"/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<rev>[^/]+)",
             self.repo_info),
        ]
        for method, pattern, route in routes:
            match = re.fullmatch(pattern, path)
            if request.method == method and match:
                return route(request, body, **match.groupdict())
        return self.error(404, f"stand-in hub has no route for {request.method} {path}")

    @staticmethod
    def error(status: int, message: str) -> httpx2.Response:
        return httpx2.Response(status, json={"error": message},
                               headers={"x-request-id": "stand-in-request"})

    def head(self, repo: str) -> dict[str, Any] | None:
        commits = self.repos[repo]["commits"]
        return commits[-1] if commits else None

    def files_at(self, repo: str, commit: str) -> dict[str, bytes]:
        return next(c["files"] for c in self.repos[repo]["commits"] if c["oid"] == commit)

    def fetch(self, url: str) -> bytes:
        """What GET <endpoint>/<repo>/resolve/<commit>/<path> would return."""
        match = re.fullmatch(rf"{HUB}/([^/]+/[^/]+)/resolve/([0-9a-f]{{40}})/(.+)", url)
        assert match, f"not a resolve URL at a commit: {url}"
        repo, commit, path = match.groups()
        return self.files_at(repo, commit)[path]

    # -- endpoints

    def create_repo(self, request: httpx2.Request, body: bytes) -> httpx2.Response:
        payload = json.loads(body)
        assert set(payload) <= {"name", "organization", "visibility", "type"}, payload
        assert payload.get("type", "model") == "model"
        repo = f"{payload['organization']}/{payload['name']}"
        if repo in self.repos:  # the Hub's 409 names the existing repo's URL
            return httpx2.Response(409, json={"error": "You already created this model repo",
                                              "url": f"{HUB}/{repo}"})
        self.repos[repo] = {"visibility": payload.get("visibility"), "commits": []}
        return httpx2.Response(200, json={"url": f"{HUB}/{repo}", "name": repo, "id": repo})

    def validate_yaml(self, request: httpx2.Request, body: bytes) -> httpx2.Response:
        payload = json.loads(body)
        assert payload["repoType"] == "model" and payload["content"].startswith("---\n")
        return httpx2.Response(200, json={"errors": [], "warnings": []})

    def preupload(self, request: httpx2.Request, body: bytes, repo: str,
                  rev: str) -> httpx2.Response:
        head = self.head(repo)
        files = []
        for item in json.loads(body)["files"]:
            assert set(item) == {"path", "sample", "size"}, item
            sample = base64.b64decode(item["sample"])
            binary = b"\0" in sample or item["path"].endswith(LFS_SUFFIXES)
            existing = (head["files"] if head else {}).get(item["path"])
            oid = None if existing is None else (  # how the Hub names a file it already has
                hashlib.sha256(existing).hexdigest() if binary else git_blob_oid(existing))
            files.append({"path": item["path"], "uploadMode": "lfs" if binary else "regular",
                          "shouldIgnore": False, "oid": oid})
        return httpx2.Response(200, json={"files": files,
                                          "commitOid": head["oid"] if head else None})

    def lfs_batch(self, request: httpx2.Request, body: bytes, repo: str) -> httpx2.Response:
        payload = json.loads(body)
        assert payload["operation"] == "upload" and payload["hash_algo"] == "sha256"
        objects = []
        for obj in payload["objects"]:
            actions = None if obj["oid"] in self.lfs else {
                "upload": {"href": f"{LFS_STORAGE}/{obj['oid']}"},
                "verify": {"href": f"{HUB}/{repo}.git/info/lfs/objects/verify"}}
            objects.append({"oid": obj["oid"], "size": obj["size"], "authenticated": True,
                            **({"actions": actions} if actions else {})})
        return httpx2.Response(200, json={"transfer": "basic", "objects": objects})

    def lfs_put(self, request: httpx2.Request, body: bytes) -> httpx2.Response:
        assert request.method == "PUT"
        assert request.headers.get("authorization") is None, "storage URLs are pre-signed"
        oid = str(request.url).rsplit("/", 1)[1]
        assert hashlib.sha256(body).hexdigest() == oid, "uploaded bytes do not match the oid"
        self.lfs[oid] = body
        return httpx2.Response(200)

    def lfs_verify(self, request: httpx2.Request, body: bytes, repo: str) -> httpx2.Response:
        payload = json.loads(body)
        assert len(self.lfs[payload["oid"]]) == payload["size"]
        return httpx2.Response(200, json={"success": True})

    def repo_info(self, request: httpx2.Request, body: bytes, repo: str,
                  rev: str) -> httpx2.Response:
        head = self.head(repo)
        if repo not in self.repos or head is None:
            return self.error(404, "Repository not found")
        return httpx2.Response(200, json={"id": repo, "modelId": repo, "sha": head["oid"],
                                          "private": self.repos[repo]["visibility"] == "private",
                                          "siblings": [{"rfilename": n} for n in head["files"]]})

    def commit(self, request: httpx2.Request, body: bytes, repo: str,
               rev: str) -> httpx2.Response:
        assert request.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in body.decode().splitlines()]
        header = lines[0]
        assert header["key"] == "header" and header["value"]["summary"]
        head = self.head(repo)
        parent = header["value"].get("parentCommit")
        if parent is not None and parent != (head["oid"] if head else None):
            return self.error(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head["files"]) if head else {}
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                assert value["encoding"] == "base64"
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                assert value["algo"] == "sha256" and value["oid"] in self.lfs, value
                files[value["path"]] = self.lfs[value["oid"]]
            else:
                raise AssertionError(f"unexpected commit operation {line['key']}")
        oid = hashlib.sha1(body + (head["oid"].encode() if head else b"")).hexdigest()
        self.repos[repo]["commits"].append({"oid": oid, "files": files, "header": header,
                                            "operations": lines[1:]})
        return httpx2.Response(200, json={"commitUrl": f"{HUB}/{repo}/commit/{oid}",
                                          "commitOid": oid, "success": True})


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[StandInHub]:
    """The stand-in Hub behind huggingface_hub's shared client; the token comes from HF_TOKEN."""
    stand_in = StandInHub(token=FAKE_TOKEN)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.setattr(constants, "ENDPOINT", HUB)
    set_client_factory(lambda: httpx2.Client(
        transport=httpx2.MockTransport(stand_in.handle),
        event_hooks={"request": [hf_request_event_hook]}, follow_redirects=True))
    yield stand_in
    set_client_factory(default_client_factory)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dist(tmp_path_factory.mktemp("dist"))


def run_publish(built: Path, *extra: str) -> int:
    return main(["publish", str(built), "--repo", REPO, *extra])


def assert_token_nowhere(hub: StandInHub, capsys: pytest.CaptureFixture[str],
                         caplog: pytest.LogCaptureFixture) -> tuple[str, str]:
    out, err = capsys.readouterr()
    logged = caplog.text + "".join(r.getMessage() for r in caplog.records)
    for where, text in (("stdout", out), ("stderr", err), ("log", logged)):
        assert FAKE_TOKEN not in text, f"the token leaked to {where}"
    assert any(r.authorization == f"Bearer {FAKE_TOKEN}" for r in hub.requests), (
        "the client never sent the token: the test proves nothing")
    return out, err


# ---------------------------------------------------------------------------- success


def test_publish_uploads_the_package_then_an_app_config_pinned_to_it(
        built: Path, hub: StandInHub, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        assert run_publish(built, "--private") == 0
    out, _ = assert_token_nowhere(hub, capsys, caplog)
    repo = hub.repos[REPO]
    assert repo["visibility"] == "private"
    first, second = repo["commits"]

    package = [n for n in list_files(built) if n != APP_CONFIG_FILE]
    assert sorted(first["files"]) == package
    for name in package:
        assert first["files"][name] == (built / name).read_bytes(), name
    lfs_paths = sorted(op["value"]["path"] for op in first["operations"]
                       if op["key"] == "lfsFile")
    assert lfs_paths == ["libs/tiny-q4f32_1-webgpu.wasm", "params_shard_0.bin",
                         "params_shard_1.bin"]

    assert second["header"]["value"]["parentCommit"] == first["oid"]
    assert sorted(op["value"]["path"] for op in second["operations"]) == [
        "README.md", APP_CONFIG_FILE]
    app_config = json.loads(second["files"][APP_CONFIG_FILE])
    record = app_config["model_list"][0]
    base = f"{HUB}/{REPO}/resolve/{first['oid']}/"
    assert record["model"] == base
    assert record["model_lib"] == base + "libs/tiny-q4f32_1-webgpu.wasm"
    assert hub.fetch(record["model_lib"]) == (built / "libs/tiny-q4f32_1-webgpu.wasm").read_bytes()
    for name in ("mlc-chat-config.json", "ndarray-cache.json", "tokenizer.json"):
        assert hub.fetch(record["model"] + name) == (built / name).read_bytes()
    shards = json.loads(hub.fetch(record["model"] + "ndarray-cache.json"))["records"]
    assert all(hub.fetch(record["model"] + s["dataPath"]) for s in shards)
    original = json.loads((built / APP_CONFIG_FILE).read_text())["model_list"][0]
    assert record["integrity"] == original["integrity"]

    card = second["files"]["README.md"].decode()
    assert f"files at commit | `{first['oid']}`" in card
    assert 'CreateMLCEngine("tiny-q4f32_1", { appConfig })' in card
    assert f"--artifact {base}libs/tiny-q4f32_1-webgpu.wasm" in card
    assert any(r.url == f"{HUB}/api/validate-yaml" for r in hub.requests)

    assert f"package commit:      {first['oid']}" in out
    assert f"AppConfig + card:    {second['oid']}" in out
    # The share link opens the web client on the AppConfig of the final commit, not on main.
    [link] = [line.split()[-1] for line in out.splitlines() if "share link:" in line]
    query = parse_qs(urlsplit(link).query)
    assert link.startswith("http://127.0.0.1:8000/?config=")
    assert query["config"] == [f"{HUB}/{REPO}/resolve/{second['oid']}/{APP_CONFIG_FILE}"]


def test_publishing_again_to_an_existing_repo_pins_the_new_app_config_to_the_files(
        built: Path, hub: StandInHub, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_publish(built) == 0
    assert run_publish(built) == 0  # the package is unchanged: no new package commit
    commits = hub.repos[REPO]["commits"]
    assert len(commits) == 3
    record = json.loads(commits[-1]["files"][APP_CONFIG_FILE])["model_list"][0]
    assert record["model"] == f"{HUB}/{REPO}/resolve/{commits[1]['oid']}/"
    assert hub.fetch(record["model_lib"]) == (built / "libs/tiny-q4f32_1-webgpu.wasm").read_bytes()
    assert hub.repos[REPO]["visibility"] == "public"


def test_dry_run_sends_nothing(built: Path, hub: StandInHub) -> None:
    assert run_publish(built, "--dry-run") == 0
    assert hub.requests == []


# ---------------------------------------------------------------------------- failures


def test_no_token_says_how_to_log_in_and_sends_nothing(
        built: Path, hub: StandInHub, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("HF_TOKEN")
    assert run_publish(built) == 3
    err = capsys.readouterr().err
    assert "no Hugging Face token found" in err and "hf auth login" in err and "HF_TOKEN" in err
    assert hub.requests == []


def captured_error(built: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and stderr of a publish, plus the traceback had the CLI not caught the error."""
    code = run_publish(built)
    from webslm import publish

    try:
        publish.publish_command(built, REPO, private=False, dry_run=False)
    except Exception as error:  # noqa: BLE001 - the point is to render whatever escapes
        rendered = "".join(traceback.format_exception(error))
        chained = [error.__cause__, error.__context__]
        return code, rendered + repr(chained)
    raise AssertionError("the second publish should have failed too")


def test_a_refused_token_is_exit_3_and_redacted_everywhere(
        built: Path, hub: StandInHub, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    hub.fail["POST /api/repos/create"] = 401
    hub.fail["GET /api/models/.*"] = 401
    with caplog.at_level(logging.DEBUG):
        code, escaped = captured_error(built, capsys)
    assert code == 3
    assert FAKE_TOKEN not in escaped
    _, err = assert_token_nowhere(hub, capsys, caplog)
    assert "the Hub refused the token while creating alice/tiny-chat (HTTP 401)" in err
    assert "Bearer ***" in err and "hf auth login" in err
    assert err.count("\n") == 1


def test_a_failing_second_commit_says_where_the_package_is(
        built: Path, hub: StandInHub, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    original = hub.commit

    def second_fails(request: httpx2.Request, body: bytes, repo: str,
                     rev: str) -> httpx2.Response:
        if hub.repos[repo]["commits"] and b"webllm-app-config.json" in body:
            return hub.error(500, f"internal error for Bearer {FAKE_TOKEN}")
        return original(request, body, repo, rev)

    hub.commit = second_fails  # type: ignore[method-assign]
    with caplog.at_level(logging.DEBUG):
        code, escaped = captured_error(built, capsys)
    assert code == 3
    assert FAKE_TOKEN not in escaped
    _, err = assert_token_nowhere(hub, capsys, caplog)
    package_commit = hub.repos[REPO]["commits"][0]["oid"]
    assert f"the package is at commit {package_commit}" in err and "(HTTP 500)" in err
    assert "run the same command again to finish" in err

    hub.commit = original  # type: ignore[method-assign]
    assert run_publish(built) == 0
    commits = hub.repos[REPO]["commits"]
    assert len(commits) == 2  # the package was not uploaded again
    record = json.loads(commits[1]["files"][APP_CONFIG_FILE])["model_list"][0]
    assert record["model"] == f"{HUB}/{REPO}/resolve/{package_commit}/"


def test_an_unreachable_hub_is_exit_3(built: Path, hub: StandInHub,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    def unreachable(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError(f"connection refused (sent {FAKE_TOKEN})", request=request)

    set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(unreachable)))
    assert run_publish(built) == 3
    err = capsys.readouterr().err
    assert "cannot reach the Hub while creating alice/tiny-chat: ConnectError" in err
    assert FAKE_TOKEN not in err


def test_a_rejected_request_is_bad_input(built: Path, hub: StandInHub,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    hub.fail["POST /api/models/[^/]+/[^/]+/preupload/main"] = 400
    assert run_publish(built) == 2
    err = capsys.readouterr().err
    assert "the Hub rejected the request while uploading the package (HTTP 400)" in err


def test_the_stand_in_refuses_what_the_hub_refuses(hub: StandInHub) -> None:
    """The stand-in is only evidence if it rejects wrong requests: a bad token, bytes that do
    not match their LFS oid, a stale parent commit."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token="hf_" + "Z" * 34)
    with pytest.raises(HfHubHTTPError) as refused:
        api.create_repo(REPO)
    assert refused.value.response.status_code == 401
    api = HfApi(token=FAKE_TOKEN)
    api.create_repo(REPO)
    first = api.create_commit(REPO, [CommitOperationAdd("a.txt", b"one")], commit_message="1")
    api.create_commit(REPO, [CommitOperationAdd("a.txt", b"two")], commit_message="2")
    with pytest.raises(HfHubHTTPError) as stale:
        api.create_commit(REPO, [CommitOperationAdd("a.txt", b"three")], commit_message="3",
                          parent_commit=first.oid)
    assert stale.value.response.status_code == 412
    with pytest.raises(AssertionError, match="do not match the oid"):
        hub.handle(httpx2.Request("PUT", f"{LFS_STORAGE}/{'0' * 64}", content=b"x"))


# ---------------------------------------------------------------------------- a real build


@pytest.mark.docker
def test_publishing_a_real_stand_in_build(standin_image: str, tiny_qwen2: Path,
                                          tmp_path: Path, hub: StandInHub,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The pipeline's own dist folder (stand-in toolchain, real Docker engine) is accepted as it
    is, and every file its published AppConfig and ndarray-cache.json name is fetchable."""
    from standin.image import standin_toolchain

    from webslm.pipeline import BuildOptions, build_model
    from webslm.spec import resolve_spec

    options = BuildOptions(out=tmp_path / "dist", toolchain=standin_toolchain(standin_image),
                           cache_dir=tmp_path / "cache", show_progress=False)
    dist = build_model(resolve_spec(model=str(tiny_qwen2), name="tiny"), options).dist
    assert main(["publish", str(dist), "--repo", REPO]) == 0
    first, second = hub.repos[REPO]["commits"]
    record = json.loads(second["files"][APP_CONFIG_FILE])["model_list"][0]
    assert record["model"] == f"{HUB}/{REPO}/resolve/{first['oid']}/"
    assert hub.fetch(record["model_lib"]) == (dist / "libs/tiny-q4f16_1-webgpu.wasm").read_bytes()
    chat = json.loads(hub.fetch(record["model"] + "mlc-chat-config.json"))
    cache = json.loads(hub.fetch(record["model"] + "ndarray-cache.json"))
    for name in [*chat["tokenizer_files"], *(r["dataPath"] for r in cache["records"])]:
        assert hub.fetch(record["model"] + name) == (dist / name).read_bytes(), name
    assert FAKE_TOKEN not in "".join(capsys.readouterr())


# ---------------------------------------------------------------------------- finetune --push


def test_finetune_push_goes_through_the_one_hub_adapter(
        tmp_path: Path, hub: StandInHub, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "finetuned"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "qwen2"}')
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 8)
    assert push_folder(folder, REPO) == f"https://huggingface.co/{REPO}"
    uploaded = {f for commit in hub.repos[REPO]["commits"] for f in commit["files"]}
    assert {"config.json", "model.safetensors"} <= uploaded

    hub.fail["POST /api/repos/create"] = 401
    with caplog.at_level(logging.DEBUG), pytest.raises(MissingEnvironment) as refused:
        push_folder(folder, REPO)
    assert "the Hub refused the token while creating alice/tiny-chat (HTTP 401)" in str(
        refused.value.line())
    assert FAKE_TOKEN not in refused.value.line()
    assert_token_nowhere(hub, capsys, caplog)
