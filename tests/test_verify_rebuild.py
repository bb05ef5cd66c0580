"""`webslm verify` on the real Docker engine with the TEST STAND-IN toolchain image.

A faithful rebuild verifies; a tampered output is caught and named; a forged provenance is caught;
a stand-in that leaks the time or the host path into the wasm (its test-only
WEBSLM_STANDIN_NONDETERMINISM setting) is reported as not reproducible, which proves verify can
fail. The stand-in image, the `standin` fixture (CLI toolchain := stand-in, cache in the test's
folder) and `standin_dist` (one faithful build) come from conftest.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import copy_model, writable_copy, write_hub_cache
from standin.image import standin_toolchain

from webslm import hub, pipeline, provenance
from webslm.cli import main
from webslm.errors import StageFailed
from webslm.files import canonical_json, sha256_file
from webslm.pipeline import BuildOptions, build_model
from webslm.spec import resolve_spec
from webslm.verify import RebuildSettings, audit_command, rebuild

pytestmark = pytest.mark.docker
LIB = "libs/tiny-q4f16_1-webgpu.wasm"
HUB_COMMIT = "3" * 40


def build_dist(model: Path, out: Path, toolchain) -> Path:
    options = BuildOptions(out=out / "dist", toolchain=toolchain, cache_dir=out / "cache",
                           show_progress=False)
    return build_model(resolve_spec(model=str(model), name="tiny"), options).dist


def table(stdout: str) -> dict[str, list[str]]:
    """The printed table's rows by file name: [expected, shipped, rebuilt, same]."""
    rows = {}
    for line in stdout.splitlines():
        cells = line.split()
        if len(cells) == 5 and cells[4] in ("yes", "NO"):
            rows[cells[0]] = cells[1:]
    return rows


def test_a_faithful_rebuild_verifies(standin, standin_dist: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["verify", str(standin_dist), "--report", str(tmp_path / "report")])
    out = capsys.readouterr()
    assert code == 0, out.err
    rows = table(out.out)
    subjects = {s["name"]: s["digest"]["sha256"]
                for s in json.loads((standin_dist / "provenance.json").read_text())["subject"]}
    assert set(rows) == set(subjects) and LIB in rows
    assert all(row == [subjects[name][:12]] * 3 + ["yes"] for name, row in rows.items())
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["ok"] and report["verdict"] == "reproducible"
    assert report["first_differing_stage"] is None and report["differences"] == {}
    conditions = report["conditions"]
    assert conditions["uid"] != str(os.getuid()) and conditions["umask"] == "0077"
    assert conditions["TZ"] != "UTC" and conditions["input order"] == "reversed"
    assert not conditions["work_root"].startswith(str(standin_dist.parent.parent))
    assert all(c["ok"] for c in report["checks"])
    assert (tmp_path / "report" / "report.md").read_text().startswith("# webslm verify: ✅")


def test_a_tampered_output_is_caught_and_named(standin, standin_dist: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    dist = writable_copy(standin_dist, tmp_path / "tiny")
    shard = bytearray((dist / "params_shard_0.bin").read_bytes())
    shard[100] ^= 0xFF
    (dist / "params_shard_0.bin").write_bytes(bytes(shard))
    chat = json.loads((dist / "mlc-chat-config.json").read_text())
    chat["temperature"] = 2.0
    (dist / "mlc-chat-config.json").write_text(canonical_json(chat))

    code = main(["verify", str(dist), "--report", str(tmp_path / "report")])
    out = capsys.readouterr()
    assert code == 1
    assert ("webslm: error: shipped files do not match the provenance: 2 of 6 files differ "
            "(mlc-chat-config.json, params_shard_0.bin)") in out.err
    rows = table(out.out)
    for name in ("params_shard_0.bin", "mlc-chat-config.json"):
        expected, shipped, rebuilt, same = rows[name]
        assert rebuilt == expected and shipped != expected and same == "NO"
    assert rows[LIB][3] == "yes"
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["reproducible"] and not report["ok"]
    assert "first difference at offset 100 (0x64)" in report["differences"]["params_shard_0.bin"]
    assert "differing JSON keys: temperature" in report["differences"]["mlc-chat-config.json"]
    # The AppConfig still pins the real chat config, so a browser would refuse the edited one.
    assert all(c["ok"] for c in report["checks"])


def test_a_forged_provenance_is_caught(standin, standin_dist: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Swap the wasm AND rewrite its digest in provenance.json and the AppConfig: the shipped
    files agree with their papers, and only the rebuild shows they are not what was standin_dist."""
    from webslm.provenance import sri

    dist = writable_copy(standin_dist, tmp_path / "tiny")
    (dist / LIB).write_bytes((dist / LIB).read_bytes() + b"\0")
    forged = sha256_file(dist / LIB)
    statement = json.loads((dist / "provenance.json").read_text())
    for subject in statement["subject"]:
        if subject["name"] == LIB:
            subject["digest"]["sha256"] = forged
    (dist / "provenance.json").write_text(canonical_json(statement))
    app = json.loads((dist / "webllm-app-config.json").read_text())
    app["model_list"][0]["integrity"]["model_lib"] = sri(forged)
    (dist / "webllm-app-config.json").write_text(canonical_json(app))

    assert main(["verify", str(dist)]) == 1
    out = capsys.readouterr()
    expected, shipped, rebuilt, same = table(out.out)[LIB]
    assert expected == shipped == forged[:12] and rebuilt != expected and same == "NO"
    assert "every tool stage's output matches the provenance's record" in out.out
    assert "not reproducible" in out.err


@pytest.mark.parametrize("leak", ["time", "hostpath"])
def test_a_compiler_that_leaks_run_state_is_not_reproducible(
        standin_image: str, tiny_qwen2: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], leak: str) -> None:
    leaky = standin_toolchain(standin_image, WEBSLM_STANDIN_NONDETERMINISM=leak)
    dist = build_dist(tiny_qwen2, tmp_path, leaky)
    monkeypatch.setattr("webslm.toolchain.current_toolchain", lambda: leaky)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    assert main(["verify", str(dist), "--report", str(tmp_path / "report")]) == 1
    out = capsys.readouterr()
    assert "webslm: error: not reproducible: 1 of 6 files differ (" + LIB in out.err
    assert "first differing stage: compile" in out.err
    rows = table(out.out)
    assert [name for name, row in rows.items() if row[3] == "NO"] == [LIB]
    assert rows[LIB][0] == rows[LIB][1] != rows[LIB][2]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    stage = report["first_differing_stage"]
    assert stage["stage"] == "compile" and stage["same_inputs"] is True
    assert "first difference at offset" in report["differences"][LIB]


def test_a_toolchain_image_that_is_absent_exits_3(standin, standin_dist: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    missing = replace(standin, image="webslm-standin:absent-for-this-test")
    monkeypatch.setattr("webslm.toolchain.current_toolchain", lambda: missing)
    assert main(["verify", str(standin_dist)]) == 3
    assert "is not in the local Docker engine" in capsys.readouterr().err


def test_a_hub_model_build_is_verified_at_its_recorded_commit(
        standin, tiny_qwen2: Path, tmp_path: Path,
        offline_hub: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_hub_cache(offline_hub, "Org/Tiny-Qwen", tiny_qwen2, commit=HUB_COMMIT)
    dist = build_model(resolve_spec(model="Org/Tiny-Qwen", name="tiny"),
                       BuildOptions(out=tmp_path / "dist", toolchain=standin,
                                    cache_dir=tmp_path / "cache", show_progress=False)).dist
    model = json.loads((dist / "provenance.json").read_text())[
        "predicate"]["buildDefinition"]["externalParameters"]["model"]
    assert model == {"id": "Org/Tiny-Qwen", "revision": HUB_COMMIT, "source": "hub",
                     "allow_pickle": False}
    # main moves on; verify must still rebuild from the commit the build used
    (offline_hub / "models--Org--Tiny-Qwen" / "refs" / "main").write_text("9" * 40)
    assert main(["verify", str(dist)]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("tampered", [False, True])
def test_step_one_runs_and_is_reported_even_without_the_toolchain_image(
        standin, standin_dist: Path, tmp_path: Path, tampered: bool,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    dist = writable_copy(standin_dist, tmp_path / "tiny")
    if tampered:
        with open(dist / "params_shard_0.bin", "r+b") as handle:
            handle.write(b"\xff")
    missing = replace(standin, image="webslm-standin:absent-for-this-test")
    monkeypatch.setattr("webslm.toolchain.current_toolchain", lambda: missing)
    code = main(["verify", str(dist), "--report", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    assert out.startswith("step 1: 6 shipped files hashed against ")
    assert "is not in the local Docker engine" in err and err.count("\n") == 1
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    files = {f["name"]: f for f in report["files"]}
    assert len(files) == 6 and all(f["rebuilt"] is None for f in files.values())
    assert files["params_shard_0.bin"]["shipped"] == sha256_file(dist / "params_shard_0.bin")
    assert [n for n, f in files.items() if not f["intact"]] == (
        ["params_shard_0.bin"] if tampered else [])
    if tampered:
        assert code == 1 and "1 file differs (params_shard_0.bin)" in out
        assert "shipped files do not match the provenance (params_shard_0.bin)" in err
    else:
        assert code == 3 and out.rstrip().endswith("all match")


def test_audit_reports_a_tampered_file_under_another_toolchain(
        standin, standin_dist: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    dist = writable_copy(standin_dist, tmp_path / "tiny")
    with open(dist / LIB, "r+b") as handle:
        handle.seek(8)
        handle.write(b"\xff")
    other = standin_toolchain(standin.image, WEBSLM_STANDIN_MARK="another toolchain")
    with pytest.raises(StageFailed, match="shipped files do not match the provenance"):
        audit_command(str(dist / LIB), None, tmp_path / "r",
                      RebuildSettings(toolchain=other, show_progress=False))
    assert f"1 file differs ({LIB})" in capsys.readouterr().out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [f["name"] for f in report["files"] if not f["intact"]] == [LIB]
    assert "toolchain" in report["error"]


def string_values(value) -> list[str]:
    """Every string inside a JSON value."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in string_values(v)]
    if isinstance(value, list):
        return [s for v in value for s in string_values(v)]
    return [value] if isinstance(value, str) else []


def test_provenance_names_a_local_model_as_given_and_verify_finds_it(
        standin, tiny_qwen2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The same build in two folders writes the same provenance, with no host path in it;
    verify finds the model by that path from where it runs, from the build's folder, or by
    --model once it has moved."""
    statements = []
    for place in ("first", "second"):
        folder = tmp_path / place
        copy_model(tiny_qwen2, folder / "tiny")
        monkeypatch.chdir(folder)
        assert main(["build", "--model", "tiny", "--out", "dist"]) == 0, capsys.readouterr().err
        statements.append((folder / "dist" / "tiny" / "provenance.json").read_text())
    assert statements[0] == statements[1]
    statement = json.loads(statements[0])
    external = statement["predicate"]["buildDefinition"]["externalParameters"]
    assert external["model"] == {"id": "./tiny", "revision": None, "source": "local",
                                 "allow_pickle": False}
    assert external["spec"]["model"] == "./tiny"
    assert not [s for s in string_values(statement) if s.startswith("/") or str(tmp_path) in s]

    dist = tmp_path / "second" / "dist" / "tiny"
    assert main(["verify", "dist/tiny"]) == 0, capsys.readouterr().err  # from the build folder
    monkeypatch.chdir(tmp_path)
    assert main(["verify", str(dist)]) == 0, capsys.readouterr().err  # the build's folder
    (tmp_path / "second" / "tiny").rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["verify", str(dist)]) == 2
    err = capsys.readouterr().err
    assert "cannot find the model folder ./tiny" in err and "--model" in err
    assert main(["verify", str(dist), "--model", str(tmp_path / "moved")]) == 0
    assert main(["verify", str(dist), "--model", str(tmp_path / "first" / "dist")]) == 2


def test_an_allow_pickle_build_is_verified_with_it_and_the_model_is_hashed_once(
        standin, tiny_qwen2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """--allow-pickle is in the provenance, so verify resolves the model with it (a pickle
    model would be refused without it); verify hashes the model's files once, not again in the
    rebuild."""
    copy_model(tiny_qwen2, tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    assert main(["build", "--model", "tiny", "--out", "dist", "--allow-pickle"]) == 0, \
        capsys.readouterr().err
    external = json.loads((tmp_path / "dist" / "tiny" / "provenance.json").read_text())[
        "predicate"]["buildDefinition"]["externalParameters"]
    assert external["model"]["allow_pickle"] is True

    resolved, model_hashes = [], []
    real_resolve, real_hash = hub.resolve_model, provenance.hash_files

    def resolve_model(spec, **kwargs):
        resolved.append(kwargs.get("allow_pickle"))
        return real_resolve(spec, **kwargs)

    def hash_files(root: Path, names):
        names = list(names)
        if "config.json" in names and root.resolve() == (tmp_path / "tiny").resolve():
            model_hashes.append(root)
        return real_hash(root, names)

    for user in (rebuild, pipeline):  # where each is imported and called
        monkeypatch.setattr(user, "resolve_model", resolve_model)
        monkeypatch.setattr(user, "hash_files", hash_files)
    assert main(["verify", "dist/tiny"]) == 0, capsys.readouterr().err
    assert resolved == [True, True]  # verify's input check and the rebuild
    assert len(model_hashes) == 1
