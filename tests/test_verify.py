"""verify/audit without Docker: comparison, explanations, reports, fetching, the toolchain check,
and the one-line errors for bad input (exit 2) and missing environment (exit 3)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import http_server, require, serving, write_hub_repo
from test_publish import TOOLCHAIN_ID, make_dist

from webslm.cli import main
from webslm.errors import BadInput, MissingEnvironment
from webslm.files import canonical_json
from webslm.provenance import parse_provenance, sri, statement
from webslm.spec import resolve_spec
from webslm.toolchain import Toolchain
from webslm.verify import diff, fetching, rebuild
from webslm.verify import report as reports
from webslm.webllm import AppConfig

A, B, C = "a" * 64, "b" * 64, "c" * 64
STANDIN_LOCK = {"webllm": {"version": "0.2.79"}, "source_date_epoch": 1}
SPEC = resolve_spec(preset="qwen2.5-0.5b", name="m").to_json()


def lock_digest(lock: dict) -> str:
    return hashlib.sha256(canonical_json(lock).encode()).hexdigest()


def a_statement(**changes: object) -> dict:
    values = dict(
        outputs={"libs/m-webgpu.wasm": A, "mlc-chat-config.json": B},
        spec={**SPEC, "model": "./models/m"},
        model={"id": "./models/m", "revision": None, "source": "local"},
        inputs={"config.json": C}, toolchain_id=A, image="webslm-toolchain:x",
        image_digest="sha256:" + B, lock_digest=lock_digest(STANDIN_LOCK), webllm_version="0.2.79",
        stages={"compile": {"cache_key": A, "output": B}},
    )
    values.update(changes)
    return statement(**values)  # type: ignore[arg-type]


def a_toolchain(identifier: str, lock: str) -> Toolchain:
    return Toolchain(id=identifier, image="webslm-toolchain:x", lock_digest=lock,
                     webllm_version="0.2.79", env={}, seccomp_profile=None)


# ---------------------------------------------------------------------------- provenance


def test_a_build_statement_parses_into_what_verify_needs() -> None:
    parsed = parse_provenance(a_statement(), "p.json")
    assert parsed.subjects == {"libs/m-webgpu.wasm": A, "mlc-chat-config.json": B}
    assert parsed.inputs == {"config.json": C} and parsed.toolchain_id == A
    assert parsed.lock_digest == lock_digest(STANDIN_LOCK) and parsed.image_digest == B
    assert parsed.stages["compile"]["output"] == B


@pytest.mark.parametrize("document, why", [
    ([], "not a JSON object"),
    ({"_type": "https://in-toto.io/Statement/v0.1"}, "want _type"),
    ({**a_statement(), "subject": []}, "no subjects"),
    ({**a_statement(), "subject": [{"name": "x", "digest": {"sha256": "zz"}}]}, "bad sha256"),
    ({**a_statement(), "predicate": {}}, "no 'buildDefinition'"),
    ({**a_statement(), "predicate": []}, "wrong type"),
    ({**a_statement(), "subject": ["lib.wasm"]}, "wrong type"),
    ({**a_statement(), "predicate": {"buildDefinition": {
        **a_statement()["predicate"]["buildDefinition"], "externalParameters": "x"}}},
     "wrong type"),
    ({**a_statement(), "predicate": {"buildDefinition": {
        **a_statement()["predicate"]["buildDefinition"], "resolvedDependencies": [1]}}},
     "wrong type"),
    ({**a_statement(), "predicate": {"buildDefinition": {
        **a_statement()["predicate"]["buildDefinition"], "internalParameters": []}}},
     "wrong type"),
])
def test_what_is_not_a_provenance_is_refused_with_the_reason(document: object, why: str) -> None:
    with pytest.raises(BadInput) as caught:
        parse_provenance(document, "p.json")
    assert why in caught.value.line() and "p.json is not a webslm provenance" in caught.value.line()


def test_verify_of_a_folder_without_provenance_exits_2_and_reports_why(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "dist").mkdir()
    code = main(["verify", str(tmp_path / "dist"), "--report", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "has no provenance.json" in err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["verdict"] == "error" and report["ok"] is False
    assert "has no provenance.json" in report["error"]
    assert main(["verify", str(tmp_path / "missing")]) == 2


def test_audit_of_a_missing_artifact_exits_2_and_reports_why(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    artifact = str(tmp_path / "missing.wasm")
    code = main(["audit", "--artifact", artifact, "--report", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "missing.wasm is not a file" in err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert (report["command"], report["target"], report["verdict"]) == ("audit", artifact, "error")
    assert "missing.wasm is not a file" in report["error"]


def test_verify_of_a_broken_provenance_exits_2(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "provenance.json").write_text("{not json")
    assert main(["verify", str(tmp_path)]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize("field, value, message", [
    ("name", "../../../../tmp/x", "invalid name '../../../../tmp/x'"),
    ("quantization", "q4f16_1; rm -rf /", "unknown quantization 'q4f16_1; rm -rf /'"),
    ("model_type", "qwen2 --help", "unknown model type"),
    ("conv_template", "$(id)", "unknown conversation template"),
    ("revision", "main; rm -rf /", "invalid revision"),
    ("model", "/etc", "neither a Hugging Face id nor a relative folder path"),
    ("context_window_size", "4096", "is not an integer"),
    ("prefill_chunk_size", 10 ** 6, "exceeds the context window"),
    ("system_prompt", ["not", "text"], "is not text"),
])
def test_verify_and_audit_check_the_recorded_spec_as_the_cli_checks_flags(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, value: object,
        message: str) -> None:
    document = a_statement()
    document["predicate"]["buildDefinition"]["externalParameters"]["spec"][field] = value
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "provenance.json").write_text(canonical_json(document))
    (dist / "mlc-chat-config.json").write_text("{}")
    for argv in (["verify", str(dist)],
                 ["audit", "--artifact", str(dist / "mlc-chat-config.json")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "its spec" in err


# ---------------------------------------------------------------------------- comparing


def test_rows_tell_a_tampered_file_from_an_unreproducible_one() -> None:
    rows = diff.compare_files(
        expected={"lib.wasm": A, "config.json": B, "shard.bin": C},
        shipped={"lib.wasm": A, "config.json": C, "shard.bin": None, "extra.txt": A},
        rebuilt={"lib.wasm": B, "config.json": B, "shard.bin": C})
    by_name = {r.name: r for r in rows}
    assert [r.name for r in rows] == ["config.json", "extra.txt", "lib.wasm", "shard.bin"]
    assert not by_name["lib.wasm"].reproducible and by_name["lib.wasm"].intact
    assert by_name["config.json"].reproducible and not by_name["config.json"].intact
    assert by_name["shard.bin"].reproducible and not by_name["shard.bin"].intact  # absent
    assert by_name["extra.txt"].reproducible and not by_name["extra.txt"].intact  # not a subject
    assert not any(r.same for r in rows)


def test_a_file_not_shipped_here_is_judged_on_the_rebuild_alone() -> None:
    rows = diff.compare_files({"lib.wasm": A, "x.json": B}, {"lib.wasm": A},
                                {"lib.wasm": A, "x.json": B})
    assert all(r.same for r in rows) and rows[1].shipped_checked is False


def test_the_first_differing_stage_follows_build_order() -> None:
    order = ("stage", "convert_weight", "gen_config", "compile")
    expected = {s: {"cache_key": A, "output": A} for s in order}
    rebuilt = {**expected, "gen_config": {"cache_key": A, "output": B},
               "compile": {"cache_key": B, "output": C}}
    found = diff.first_differing_stage(order, expected, rebuilt)
    assert found is not None and found.stage == "gen_config" and found.same_inputs
    assert "not reproducible" in found.explain()
    only_compile = {**expected, "compile": rebuilt["compile"]}
    later = diff.first_differing_stage(order, expected, only_compile)
    assert later is not None and not later.same_inputs and "inputs" in later.explain()
    assert diff.first_differing_stage(order, expected, expected) is None


def test_app_config_integrity_is_checked_against_the_subjects() -> None:
    subjects = {"mlc-chat-config.json": A, "libs/m-webgpu.wasm": B, "tokenizer.json": C,
                "ndarray-cache.json": C, "params_shard_0.bin": A}
    provenance = parse_provenance(a_statement(outputs=subjects, toolchain_id=A), "p.json")
    record: dict[str, Any] = {
        "model": "https://x/m/resolve/main/", "model_id": "m-q4f16_1",
        "model_lib": "https://x/m/resolve/main/libs/m-webgpu.wasm",
        "integrity": {"config": sri(A), "model_lib": sri(B),
                      "tokenizer": {"tokenizer.json": sri(C)}},
        "webslm": {"toolchain_id": A, "weights": {"ndarray-cache.json": sri(C),
                                                  "params_shard_0.bin": sri(A)}}}

    def failed(changes: dict[str, Any]) -> list[str]:
        config = AppConfig.from_json({"model_list": [{**record, **changes}]})
        return [c.name for c in diff.app_config_checks(config, provenance) if not c.ok]

    assert failed({}) == []
    assert failed({"integrity": {**record["integrity"], "model_lib": sri(C)},
                   "webslm": {**record["webslm"], "toolchain_id": B}}) == [
        "webllm-app-config.json m-q4f16_1 integrity.model_lib",
        "webllm-app-config.json m-q4f16_1 toolchain_id"]
    outside = AppConfig.from_json({"model_list": [
        {**record, "model_lib": "https://elsewhere/libs/m-webgpu.wasm"}]})
    refused = [c for c in diff.app_config_checks(outside, provenance) if not c.ok]
    assert [c.name for c in refused] == ["webllm-app-config.json m-q4f16_1 integrity.model_lib"]
    assert refused[0].detail.endswith(
        "is not the provenance's digest of https://elsewhere/libs/m-webgpu.wasm")
    for weights in ({"ndarray-cache.json": sri(C), "params_shard_0.bin": sri(B)},
                    {"ndarray-cache.json": sri(C)},
                    {**record["webslm"]["weights"], "params_shard_9.bin": sri(A)}):
        assert failed({"webslm": {**record["webslm"], "weights": weights}}) == [
            "webllm-app-config.json m-q4f16_1 webslm.weights"]
    assert failed({"model_id": "other-q4f16_1"}) == [
        "webllm-app-config.json other-q4f16_1 model_id"]
    empty = AppConfig.from_json({"model_list": []})
    assert [c.ok for c in diff.app_config_checks(empty, provenance)] == [False]


def _forge_a_weight_digest(config: dict[str, Any]) -> None:
    config["model_list"][0]["webslm"]["weights"]["params_shard_1.bin"] = sri(A)


def _empty_the_model_list(config: dict[str, Any]) -> None:
    config["model_list"] = []


def _name_another_model(config: dict[str, Any]) -> None:
    config["model_list"][0]["model_id"] = "other-q4f32_1"


@pytest.mark.parametrize("forge", [_forge_a_weight_digest, _empty_the_model_list,
                                   _name_another_model, None])
def test_verify_step_one_refuses_an_app_config_the_provenance_does_not_back(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], forge: Any) -> None:
    dist = make_dist(tmp_path)
    assert main(["verify", str(dist)]) == 2  # intact: only the rebuild's toolchain differs
    assert "shipped files do not match" not in capsys.readouterr().err
    app_config = dist / "webllm-app-config.json"
    if forge is None:
        app_config.unlink()
    else:
        config = json.loads(app_config.read_text())
        forge(config)
        app_config.write_text(canonical_json(config))
    assert main(["verify", str(dist)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shipped files do not match the provenance" in err
    assert main(["publish", str(dist), "--repo", "alice/x", "--dry-run"]) == 2


# ---------------------------------------------------------------------------- explaining


def test_json_differences_are_dotted_paths() -> None:
    expected = {"a": {"b": 1, "c": [1, 2]}, "gone": 1, "same": "x"}
    got = {"a": {"b": 2, "c": [1, 3]}, "new": 1, "same": "x"}
    assert diff.json_differences(expected, got) == ["a.b", "a.c[1]", "gone (only expected)",
                                                      "new (only got)"]
    assert diff.json_differences([1], [1, 2]) == ["(the whole document)"]


def test_a_binary_difference_names_sizes_and_the_first_differing_offset(tmp_path: Path) -> None:
    expected, got = tmp_path / "e.bin", tmp_path / "g.bin"
    data = bytes(range(256)) * 5000  # several read chunks
    expected.write_bytes(data)
    got.write_bytes(data[:1_100_000] + b"\xff" + data[1_100_001:] + b"tail")
    assert diff.first_difference(expected, got) == 1_100_000
    text = diff.plain_difference(expected, got)
    assert f"expected {len(data)} bytes, got {len(data) + 4} bytes" in text
    assert "offset 1100000 (0x10c8e0)" in text and "got:      ff" in text
    got.write_bytes(data)
    assert diff.first_difference(expected, got) is None
    got.write_bytes(data[:10])
    assert diff.first_difference(expected, got) == 10


def test_a_json_difference_names_the_keys(tmp_path: Path) -> None:
    expected, got = tmp_path / "e" / "c.json", tmp_path / "g" / "c.json"
    for path, value in ((expected, 0.7), (got, 0.9)):
        path.parent.mkdir()
        path.write_text(canonical_json({"temperature": value, "conv_template": {"x": 1}}))
    assert "differing JSON keys: temperature" in diff.plain_difference(expected, got)


# ---------------------------------------------------------------------------- reports


def a_report(**changes: object) -> reports.Report:
    rows = diff.compare_files({"lib.wasm": A, "c.json": B}, {"lib.wasm": A, "c.json": B},
                                {"lib.wasm": C, "c.json": B})
    values = dict(command="verify", target="dist/m", provenance="dist/m/provenance.json",
                  model_id="m-q4f16_1", toolchain_id=A, conditions={"TZ": "Pacific/Kiritimati"},
                  rows=tuple(rows), first_stage=diff.StageDifference("compile", A, C, True),
                  differences={"lib.wasm": "first difference at offset 9"})
    values.update(changes)
    return reports.Report(**values)  # type: ignore[arg-type]


def test_reports_in_json_and_markdown_carry_the_table_and_the_explanation(tmp_path: Path) -> None:
    report = a_report()
    assert not report.ok and report.verdict == "not reproducible"
    assert report.summary().startswith("not reproducible: 1 of 2 files differ (lib.wasm)")
    reports.write_report(report, tmp_path / "r")
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert data["ok"] is False and data["first_differing_stage"]["stage"] == "compile"
    assert data["files"][1] == {"name": "lib.wasm", "expected": A, "shipped": A, "rebuilt": C,
                                "same": False, "intact": True}
    assert data["differences"] == {"lib.wasm": "first difference at offset 9"}
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert markdown.startswith("# webslm verify: ❌ not reproducible")
    assert f"| `lib.wasm` | `{A[:12]}` | `{A[:12]}` | `{C[:12]}` | NO |" in markdown
    assert "- TZ: `Pacific/Kiritimati`" in markdown
    text = reports.render_text(report)
    assert text.splitlines()[2].split() == ["file", "expected", "shipped", "rebuilt", "same"]
    assert "first differing stage: stage compile is not reproducible" in text
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["report.json", "report.md"]


def test_failed_checks_are_named_in_the_summary_and_in_step_one() -> None:
    name = "webllm-app-config.json m integrity.config"
    report = a_report(checks=(diff.Check(name, False, "forged"), diff.Check("other", True, "")))
    assert report.failed_checks == [name] and not report.intact
    assert report.summary().endswith(f"- failed checks: {name}")
    assert reports.render_step_one(report).endswith(f"; failed checks: {name}\n")
    assert reports.step_one_problems(report) == [name]


def test_a_matching_report_is_ok() -> None:
    rows = diff.compare_files({"x": A}, {"x": A}, {"x": A})
    report = a_report(rows=tuple(rows), first_stage=None, differences={})
    assert report.ok and report.verdict == "reproducible"
    assert "✅ reproducible" in reports.report_markdown(report)


# ---------------------------------------------------------------------------- toolchain


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True, env={**os.environ, "GIT_AUTHOR_NAME": "t",
                                           "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
                                           "GIT_COMMITTER_EMAIL": "t@x"}).stdout.strip()


def test_another_toolchain_is_refused_naming_the_commit_with_its_lock(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "docker").mkdir(parents=True)
    git(repo, "init", "-q")
    old_lock = {**STANDIN_LOCK, "source_date_epoch": 1}
    new_lock = {**STANDIN_LOCK, "source_date_epoch": 2}
    for lock in (old_lock, new_lock):
        (repo / "docker" / "toolchain.lock.json").write_text(json.dumps(lock))  # not canonical
        git(repo, "add", "docker")
        git(repo, "commit", "-qm", "lock")
    old_commit = git(repo, "rev-list", "HEAD~1", "-1")
    provenance = parse_provenance(a_statement(lock_digest=lock_digest(old_lock)), "p")
    assert rebuild.check_toolchain(provenance, a_toolchain(A, lock_digest(old_lock)), repo).ok
    with pytest.raises(BadInput) as caught:
        rebuild.check_toolchain(provenance, a_toolchain(B, lock_digest(new_lock)), repo)
    line = caught.value.line()
    assert f"names toolchain {A[:16]} but this checkout's lock gives toolchain {B[:16]};" in line
    assert f"git checkout {old_commit[:12]}" in line and "invoke toolchain" in line
    with pytest.raises(BadInput, match="Dockerfile or its context differ"):
        rebuild.check_toolchain(provenance, a_toolchain(B, lock_digest(old_lock)), repo)


# ---------------------------------------------------------------------------- fetching


@pytest.mark.parametrize("location, expected", [
    ("hf://Org/m-webllm@0123abc/libs/m.wasm", ("Org/m-webllm", "0123abc", "libs/m.wasm")),
    ("hf://Org/m-webllm/provenance.json", ("Org/m-webllm", "main", "provenance.json")),
    ("https://huggingface.co/Org/m/resolve/v1.0/libs/m.wasm", ("Org/m", "v1.0", "libs/m.wasm")),
    ("https://huggingface.co/Org/m/blob/main/a%20b.json", ("Org/m", "main", "a b.json")),
])
def test_hub_locations_parse(location: str, expected: tuple[str, str, str]) -> None:
    found = fetching.parse_hub_location(location)
    assert found is not None and (found.repo_id, found.revision, found.path) == expected


def test_other_locations_are_not_hub_files() -> None:
    assert fetching.parse_hub_location("https://example.org/Org/m/resolve/main/x") is None
    assert fetching.parse_hub_location("dist/m/libs/m.wasm") is None


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_fetching_over_http_finds_the_provenance_above_the_artifact(tmp_path: Path) -> None:
    site = tmp_path / "site" / "models" / "m"
    (site / "libs").mkdir(parents=True)
    (site / "libs" / "m.wasm").write_bytes(b"\0asm")
    (site / "provenance.json").write_text("{}")
    with http_server(tmp_path / "site") as base:
        artifact = fetching.fetch(f"{base}/models/m/libs/m.wasm", tmp_path)
        assert artifact.path.read_bytes() == b"\0asm"
        assert artifact.relative == "models/m/libs/m.wasm"
        found = fetching.find_provenance(artifact, None, tmp_path)
        assert found.location == f"{base}/models/m/provenance.json"
        assert fetching.relative_name(artifact, found) == "libs/m.wasm"
        with pytest.raises(BadInput, match="does not exist"):
            fetching.fetch(f"{base}/models/m/libs/other.wasm", tmp_path)


def test_audit_of_an_unreachable_url_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}/m/libs/m.wasm"
    assert main(["audit", "--artifact", url]) == 3
    assert "cannot download" in capsys.readouterr().err


def test_hub_files_are_fetched_at_a_pinned_commit(offline_hub: Path, tmp_path: Path) -> None:
    commit = "1" * 40
    write_hub_repo(offline_hub, "Org/m-webllm", {"libs/m.wasm": b"\0asm",
                                                 "provenance.json": b"{}"}, commit)
    artifact = fetching.fetch("https://huggingface.co/Org/m-webllm/resolve/main/libs/m.wasm",
                            tmp_path)
    assert artifact.location == f"hf://Org/m-webllm@{commit}/libs/m.wasm"
    assert artifact.path.read_bytes() == b"\0asm"
    found = fetching.find_provenance(artifact, None, tmp_path)
    assert found.location == f"hf://Org/m-webllm@{commit}/provenance.json"
    with pytest.raises(MissingEnvironment, match="not in the local cache"):
        fetching.fetch("hf://Org/other@main/libs/m.wasm", tmp_path)


def test_an_artifact_that_is_no_subject_is_refused(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    dist = tmp_path / "m"
    (dist / "libs").mkdir(parents=True)
    (dist / "provenance.json").write_text(canonical_json(a_statement()))
    (dist / "libs" / "other.wasm").write_bytes(b"\0asm other")
    assert main(["audit", "--artifact", str(dist / "libs" / "other.wasm")]) == 2
    err = capsys.readouterr().err
    assert "is not among the subjects" in err and "libs/m-webgpu.wasm" in err


def test_without_diffoscope_the_explanation_is_sizes_and_offset(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    expected, got = tmp_path / "e.wasm", tmp_path / "g.wasm"
    expected.write_bytes(b"\0asm\1\0\0\0abc")
    got.write_bytes(b"\0asm\1\0\0\0abd")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert diff.explain_difference(expected, got).startswith(
        "sizes: expected 11 bytes, got 11 bytes\nfirst difference at offset 10 (0xa):")


def test_diffoscope_explains_when_installed(tmp_path: Path) -> None:
    require(shutil.which("diffoscope") is not None, "diffoscope is not installed (test extra)")
    expected, got = tmp_path / "e.wasm", tmp_path / "g.wasm"
    expected.write_bytes(b"\0asm\1\0\0\0" + b"a" * 64)
    got.write_bytes(b"\0asm\1\0\0\0" + b"a" * 30 + b"X" + b"a" * 33)
    text = diff.explain_difference(expected, got)
    assert "first difference at offset 38" in text
    assert f"--- {expected}\n+++ {got}" in text and "X" in text


def test_verify_refuses_model_files_other_than_the_recorded_ones(
        tiny_qwen2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from webslm.hub import resolve_model
    from webslm.provenance import hash_files
    from webslm.spec import resolve_spec

    model = tmp_path / "model"
    shutil.copytree(tiny_qwen2, model)
    spec = resolve_spec(model=str(model), name="m")
    resolved = resolve_model(spec)
    dist = make_dist(tmp_path / "dist", name="m", quantization=spec.quantization)
    outputs = json.loads((dist / "provenance.json").read_text())["subject"]
    (dist / "provenance.json").write_text(canonical_json(a_statement(
        spec=spec.to_json(), inputs=hash_files(resolved.path, resolved.files),
        outputs={s["name"]: s["digest"]["sha256"] for s in outputs},
        toolchain_id=TOOLCHAIN_ID)))
    (model / "tokenizer_config.json").write_text("{}")
    monkeypatch.setattr("webslm.toolchain.current_toolchain",
                        lambda: a_toolchain(TOOLCHAIN_ID, lock_digest(STANDIN_LOCK)))
    assert main(["verify", str(dist)]) == 2
    err = capsys.readouterr().err
    assert f"the model files at {model} are not the ones the provenance names " \
           "(differing: tokenizer_config.json)" in err


@pytest.mark.parametrize("command", ["verify", "audit"])
def test_a_provenance_of_the_wrong_shape_is_exit_2_in_one_line(
        tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    dist = tmp_path / "m"
    (dist / "libs").mkdir(parents=True)
    (dist / "libs" / "m-webgpu.wasm").write_bytes(b"\0asm")
    statement = a_statement()
    statement["predicate"]["buildDefinition"]["internalParameters"] = []
    (dist / "provenance.json").write_text(canonical_json(statement))
    argv = ["verify", str(dist)] if command == "verify" else \
        ["audit", "--artifact", str(dist / "libs" / "m-webgpu.wasm")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a webslm provenance statement" in err


class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with `announced` as Content-Length, then `chunks` (a pause before
    each), then closes: a server that lies about the length or drips the body."""

    announced = 0
    chunks: tuple[bytes, ...] = ()
    pause_s = 0.0

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(self.announced))
        self.end_headers()
        self.close_connection = True
        with contextlib.suppress(ConnectionError):  # the client gave up first: that is the test
            for chunk in self.chunks:
                time.sleep(self.pause_s)
                self.wfile.write(chunk)
                self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet."""


@contextlib.contextmanager
def scripted_server(**script: Any) -> Iterator[str]:
    with serving(type("Scripted", (_ScriptedHandler,), script)) as url:
        yield url


@pytest.mark.parametrize("script, flags, code, message", [
    ({"announced": 100, "chunks": (b"x" * 10,)}, [], 3, "ended after 10 of 100 bytes"),
    ({"announced": 3 << 20, "chunks": (b"x" * (3 << 20),)}, ["--max-download-mib", "1"], 2,
     "is larger than the download limit (1 MiB)"),
    ({"announced": 2 << 20, "chunks": (b"x" * (1 << 20),) * 2}, ["--max-download-mib", "1"], 2,
     "is larger than the download limit (1 MiB)"),
    ({"announced": 6, "chunks": (b"ab", b"cd", b"ef"), "pause_s": 0.7},
     ["--download-timeout", "1"], 3, "ran past the audit's deadline"),
])
def test_audit_downloads_are_checked_and_bounded(script: dict, flags: list[str], code: int,
                                                 message: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with scripted_server(**script) as base:
        assert main(["audit", "--artifact", f"{base}/m/libs/m.wasm", *flags]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_audit_of_an_unreachable_hub_is_one_line_without_retry_noise(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"),
           "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    done = subprocess.run([sys.executable, "-m", "webslm", "audit", "--artifact",
                           "hf://alice/tiny@main/libs/tiny.wasm"], capture_output=True,
                          text=True, env=env, timeout=300, check=False)
    assert done.returncode == 3
    assert done.stderr.strip().splitlines() == [
        "webslm: error: cannot reach the Hugging Face Hub and alice/tiny@main is not in the local "
        "cache; connect to the network, or download it first with network access"]


def test_a_dripping_server_cannot_keep_audit_past_its_deadline(
        capsys: pytest.CaptureFixture[str]) -> None:
    """One byte every 50 ms (each read is quick, the whole is 30 s): --download-timeout is a
    deadline for the whole download, not for each read."""
    with scripted_server(announced=600, chunks=(b"x",) * 600, pause_s=0.05) as base:
        started = time.monotonic()
        assert main(["audit", "--artifact", f"{base}/m/libs/m.wasm",
                     "--download-timeout", "2"]) == 3
        took = time.monotonic() - started
    assert "ran past the audit's deadline" in capsys.readouterr().err
    assert took < 3.5, f"the download went on for {took:.1f} s"


def test_audit_of_a_silent_hub_ends_at_its_deadline(tmp_path: Path) -> None:
    """A Hub that accepts connections and never answers: huggingface_hub's timeouts and retries
    would take far longer; --download-timeout bounds the whole call."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        env = {**os.environ, "HF_HOME": str(tmp_path / "hf"),
               "HF_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}"}
        command = [sys.executable, "-m", "webslm", "audit", "--artifact",
                   "hf://alice/tiny@main/libs/tiny.wasm", "--download-timeout"]
        timings = []
        for timeout in ("0.1", "3"):  # the first measures the start-up
            started = time.monotonic()
            done = subprocess.run([*command, timeout], capture_output=True, text=True, env=env,
                                  timeout=300, check=False)
            timings.append(time.monotonic() - started)
            assert done.returncode == 3 and "ran past the audit's deadline" in done.stderr
    assert timings[1] - timings[0] < 3 + 1.5, timings


@pytest.mark.parametrize("inside", [".", "reports"])
def test_a_report_folder_inside_the_dist_is_refused(tmp_path: Path, inside: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    dist = make_dist(tmp_path)
    before = sorted(p.name for p in dist.rglob("*"))
    assert main(["verify", str(dist), "--report", str(dist / inside)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass a --report folder outside the dist" in err
    assert sorted(p.name for p in dist.rglob("*")) == before


@pytest.mark.parametrize("command", ["verify", "audit"])
def test_a_report_folder_that_cannot_be_written_is_exit_3(
        tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["verify", str(tmp_path)] if command == "verify" else \
        ["audit", "--artifact", str(tmp_path / "x.wasm")]
    assert main([*argv, "--report", "/sys/webslm-report"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write in /sys" in err
