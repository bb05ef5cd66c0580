"""`webslm audit` on the real Docker engine with the TEST STAND-IN toolchain image: a shipped wasm
from a dist folder on disk, over HTTP, and from a Hugging Face model repo (an offline cache laid
out as huggingface_hub keeps it, since the Hub is out of reach here), matching and not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import http_server, writable_copy, write_hub_repo
from test_verify_rebuild import LIB, table

from webslm.cli import main
from webslm.files import canonical_json, sha256_file

pytestmark = pytest.mark.docker
COMMIT = "2" * 40


def test_audit_of_a_shipped_wasm_on_disk_matches(standin, standin_dist: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["audit", "--artifact", str(standin_dist / LIB), "--report", str(tmp_path / "r")])
    out = capsys.readouterr()
    assert code == 0, out.err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["command"] == "audit" and report["ok"]
    # found beside the libs/ folder
    assert report["provenance"] == str(standin_dist / "provenance.json")
    assert report["checks"][0] == {"name": f"digest of {LIB} matches the provenance", "ok": True,
                                   "detail": f"{(standin_dist / LIB).resolve()}: "
                                             f"{sha256_file(standin_dist / LIB)}"}
    shipped = {f["name"]: f["shipped"] for f in report["files"]}
    assert shipped[LIB] == sha256_file(standin_dist / LIB)
    assert {v for k, v in shipped.items() if k != LIB} == {"not checked"}


def test_audit_of_a_mismatching_wasm_fails_and_shows_the_difference(
        standin, standin_dist: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    artifact = tmp_path / "downloads" / "tiny-q4f16_1-webgpu.wasm"
    artifact.parent.mkdir()
    data = bytearray((standin_dist / LIB).read_bytes())
    data[-3] ^= 0x01
    artifact.write_bytes(bytes(data))
    code = main(["audit", "--artifact", str(artifact), "--provenance",
                 str(standin_dist / "provenance.json"), "--report", str(tmp_path / "r")])
    out = capsys.readouterr()
    assert code == 1
    assert f"shipped files do not match the provenance: 1 of 6 files differ ({LIB})" in out.err
    expected, shipped, rebuilt, same = table(out.out)[LIB]
    assert expected == rebuilt != shipped and same == "NO"
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["checks"][0]["ok"] is False and report["reproducible"] is True
    assert f"first difference at offset {len(data) - 3}" in report["differences"][LIB]


def test_audit_over_http_finds_the_provenance_and_matches(standin, standin_dist: Path,
                                                          tmp_path: Path) -> None:
    shutil.copytree(standin_dist, tmp_path / "site" / "models" / "tiny" / "resolve" / "main")
    with http_server(tmp_path / "site") as base:  # laid out as `invoke serve` serves it
        url = f"{base}/models/tiny/resolve/main/{LIB}"
        assert main(["audit", "--artifact", url, "--report", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["target"] == url
    assert report["provenance"] == f"{base}/models/tiny/resolve/main/provenance.json"


def test_audit_of_a_hub_repo_uses_the_pinned_commit(standin, standin_dist: Path, tmp_path: Path,
                                                    offline_hub: Path) -> None:
    files = {p.relative_to(standin_dist).as_posix(): p.read_bytes()
             for p in sorted(standin_dist.rglob("*")) if p.is_file()}
    write_hub_repo(offline_hub, "Org/tiny-webllm", files, COMMIT)
    url = f"https://huggingface.co/Org/tiny-webllm/resolve/main/{LIB}"
    assert main(["audit", "--artifact", url, "--report", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["target"] == f"hf://Org/tiny-webllm@{COMMIT}/{LIB}"
    assert report["provenance"] == f"hf://Org/tiny-webllm@{COMMIT}/provenance.json"
    assert report["ok"]


def test_audit_refuses_a_provenance_from_another_toolchain(
        standin, standin_dist: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    dist = writable_copy(standin_dist, tmp_path / "tiny")
    statement = json.loads((dist / "provenance.json").read_text())
    for dependency in statement["predicate"]["buildDefinition"]["resolvedDependencies"]:
        if dependency["name"] in ("toolchain", "docker/toolchain.lock.json"):
            dependency["digest"]["sha256"] = "f" * 64
    (dist / "provenance.json").write_text(canonical_json(statement))
    assert main(["audit", "--artifact", str(dist / LIB), "--report", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"the provenance names toolchain {'f' * 16} but this checkout's lock gives" in err
    assert f"check out the webslm commit whose docker/toolchain.lock.json has digest {'f' * 16}" \
        in err
    assert json.loads((tmp_path / "r" / "report.json").read_text())["verdict"] == "error"
