"""`webslm build` never loses or falsifies data: the model folder and foreign folders are never
replaced, a cache hit never ships edited bytes, SIGTERM and kills leave nothing behind, and the
dist swap cannot leave the dist missing. Container stages run in the TEST STAND-IN image."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import copy_model, digests, interrupt_when, running, seconds_after_firing
from docker.errors import NotFound
from standin.image import standin_toolchain

from webslm import files
from webslm.cache import StageCache
from webslm.cli import main, sigterm_unwinds
from webslm.container import HOST_LABEL, OWNER_LABEL
from webslm.errors import BadInput, Terminated
from webslm.files import atomic_directory, check_writable, owner_token, recover_directory
from webslm.pipeline import BuildOptions, build_many
from webslm.provenance import PROVENANCE_FILE
from webslm.spec import resolve_spec


def dead_token() -> str:
    """The owner token of a process that has exited."""
    process = subprocess.Popen(["true"])
    process.wait()
    return f"{process.pid}-1"


# ---------------------------------------------------------------------------- the output folder


@pytest.mark.parametrize("layout, relation", [
    ("is", "is the model folder"),  # --out . with <out>/<name> the model folder itself
    ("inside", "is inside the model folder"),
    ("contains", "contains the model folder"),
])
def test_the_model_folder_is_never_the_output(no_toolchain_needed: None, tiny_qwen2: Path,
                                              tmp_path: Path, layout: str, relation: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    if layout == "contains":
        model = copy_model(tiny_qwen2, tmp_path / "dist" / "tiny" / "finetuned")
        out, name = tmp_path / "dist", "tiny"
    else:
        model = copy_model(tiny_qwen2, tmp_path / "finetuned")
        (model / "notes.txt").write_text("mine")
        out, name = (tmp_path, "finetuned") if layout == "is" else (model / "dist", "tiny")
    before = digests(model)
    assert main(["build", "--model", str(model), "--name", name, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and relation in error
    assert digests(model) == before


@pytest.mark.parametrize("occupant", ["file", "folder"])
def test_a_foreign_file_or_folder_at_the_dist_path_is_refused(
        no_toolchain_needed: None, tiny_qwen2: Path, tmp_path: Path, occupant: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    final = tmp_path / "dist" / "tiny"
    final.parent.mkdir()
    if occupant == "file":
        final.write_text("my notes")
    else:
        final.mkdir()
        (final / "weights.bin").write_bytes(b"precious")
    before = digests(final.parent)
    code = main(["build", "--model", str(tiny_qwen2), "--name", "tiny",
                 "--out", str(final.parent)])
    assert code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(final) in error
    assert digests(final.parent) == before


def test_an_output_inside_a_file_is_bad_input_and_an_unwritable_one_exit_3(
        no_toolchain_needed: None, tiny_qwen2: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    assert main(["build", "--model", str(tiny_qwen2), "--out", str(tmp_path / "file" / "d")]) == 2
    assert "inside a file" in capsys.readouterr().err
    assert main(["build", "--model", str(tiny_qwen2), "--out", "/sys/webslm-dist"]) == 3
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "cannot write in /sys" in error


# ---------------------------------------------------------------------------- the cache


@pytest.mark.docker
def test_editing_a_dist_file_does_not_poison_the_cache(standin, tiny_qwen2: Path,
                                                       tmp_path: Path) -> None:
    argv = ["build", "--model", str(tiny_qwen2), "--name", "tiny"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    original = digests(tmp_path / "a" / "tiny")
    shard = tmp_path / "a" / "tiny" / "params_shard_0.bin"
    os.chmod(shard, 0o644)  # dist files are the user's to change
    with open(shard, "r+b") as handle:
        handle.write(b"\xff")
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    assert digests(tmp_path / "b" / "tiny") == original


@pytest.mark.docker
def test_a_damaged_cache_entry_is_discarded_and_rebuilt(standin, tiny_qwen2: Path,
                                                        tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["build", "--model", str(tiny_qwen2), "--name", "tiny"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    original = digests(tmp_path / "a" / "tiny")
    stages = tmp_path / "xdg" / "webslm" / "stages"
    shard = next(stages.glob("*/out/params_shard_0.bin"))
    os.chmod(shard, 0o644)
    with open(shard, "r+b") as handle:
        handle.write(b"\xff")
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    assert "cached convert_weight output was changed" in capsys.readouterr().err
    assert digests(tmp_path / "b" / "tiny") == original
    assert digests(shard.parent) == {n: d for n, d in original.items()
                                     if n in digests(shard.parent)}


@pytest.mark.docker
def test_a_damaged_staged_copy_is_caught_when_a_later_stage_reads_it(
        standin, tiny_qwen2: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The `stage` entry is checked only when a container stage that misses reads it."""
    argv = ["build", "--model", str(tiny_qwen2), "--name", "tiny"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    staged = next((tmp_path / "xdg" / "webslm" / "stages").glob("*/out/model.safetensors"))
    os.chmod(staged, 0o644)
    with open(staged, "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        handle.write(b"\xff")
    capsys.readouterr()
    assert main([*argv, "--quantization", "q4f32_1", "--out", str(tmp_path / "b")]) == 0
    assert "cached stage output was changed" in capsys.readouterr().err
    clean = ["--quantization", "q4f32_1", "--out", str(tmp_path / "c"), "--no-cache"]
    assert main([*argv, *clean]) == 0
    assert digests(tmp_path / "b" / "tiny") == digests(tmp_path / "c" / "tiny")


def test_a_cache_removes_scratch_of_dead_processes_only(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The scratch names the cache writes are the ones it reads back."""
    alive = StageCache(tmp_path).scratch_folder("build")
    token = dead_token()
    monkeypatch.setattr(files, "owner_token", lambda: token)
    dead = StageCache(tmp_path).scratch_folder("build")
    monkeypatch.undo()
    for folder in (dead, alive):
        (folder / "x").mkdir()
    StageCache(tmp_path)
    assert token in dead.name and not dead.exists() and alive.exists()


# ---------------------------------------------------------------------------- stopping


@pytest.mark.docker
def test_sigterm_removes_the_container_and_exits_143(
        standin, standin_image: str, tiny_qwen2: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, docker_engine) -> None:
    out = tmp_path / "dist"
    argv = ["build", "--model", str(tiny_qwen2), "--name", "tiny", "--out", str(out)]
    assert main(argv) == 0
    before = digests(out / "tiny")
    slow = standin_toolchain(standin_image, WEBSLM_STANDIN_SLEEP="compile:120")
    monkeypatch.setattr("webslm.toolchain.current_toolchain", lambda: slow)
    mine = {"label": f"{OWNER_LABEL}={owner_token()}"}

    watcher = interrupt_when(lambda: bool(running(docker_engine, mine)), signum=signal.SIGTERM)
    assert main(argv) == 143, watcher.report()
    assert seconds_after_firing(watcher) < 30
    watcher.join()
    assert digests(out / "tiny") == before
    assert sorted(p.name for p in out.iterdir()) == ["tiny"]
    assert docker_engine.containers.list(all=True, filters=mine) == []
    assert list((tmp_path / "xdg" / "webslm" / "tmp").iterdir()) == []


@pytest.mark.docker
def test_the_next_build_removes_containers_of_dead_builds(
        standin, tiny_qwen2: Path, tmp_path: Path, docker_engine) -> None:
    labels = {"webslm.stage": "compile", HOST_LABEL: socket.gethostname()}
    orphan = docker_engine.containers.create(standin.image, ["true"],
                                             labels={**labels, OWNER_LABEL: dead_token()})
    living = docker_engine.containers.create(standin.image, ["true"],
                                             labels={**labels, OWNER_LABEL: owner_token()})
    try:
        assert main(["build", "--model", str(tiny_qwen2), "--name", "tiny",
                     "--out", str(tmp_path / "dist")]) == 0
        ids = {c.id for c in docker_engine.containers.list(all=True)}
        assert orphan.id not in ids and living.id in ids
    finally:
        for container in (orphan, living):
            try:
                container.remove(force=True)
            except NotFound:  # already gone
                pass


# ---------------------------------------------------------------------------- the swap


def test_a_swap_killed_between_renames_is_restored_by_the_next_run(tmp_path: Path) -> None:
    final = tmp_path / "dist" / "tiny"
    retired = final.with_name(f".tiny.old-{dead_token()}")
    retired.mkdir(parents=True)
    (retired / PROVENANCE_FILE).write_text("{}")
    half = final.with_name(f".tiny.{dead_token()}.x1.tmp")
    half.mkdir()
    recover_directory(final)
    assert (final / PROVENANCE_FILE).is_file()
    assert sorted(p.name for p in final.parent.iterdir()) == ["tiny"]


def test_sigterm_between_the_fallback_renames_leaves_the_old_dist_in_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the file system has no atomic exchange: SIGTERM after the old copy moved aside and
    before the new one moved in. The CLI then says outputs in place are unchanged: so they are."""
    final = tmp_path / "tiny"
    with atomic_directory(final, PROVENANCE_FILE) as folder:
        (folder / PROVENANCE_FILE).write_text("old")
    rename = os.rename

    def terminated_before_the_new_copy(source: Any, target: Any) -> None:
        if Path(target) == final and Path(source).name.endswith(".tmp"):  # the new copy
            raise Terminated()
        rename(source, target)

    monkeypatch.setattr(files, "exchange", lambda first, second: False)
    monkeypatch.setattr(os, "rename", terminated_before_the_new_copy)
    with pytest.raises(Terminated), atomic_directory(final, PROVENANCE_FILE) as folder:
        (folder / PROVENANCE_FILE).write_text("new")
    monkeypatch.undo()
    assert (final / PROVENANCE_FILE).read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]


def test_the_dist_never_goes_missing_while_it_is_replaced(tmp_path: Path) -> None:
    final = tmp_path / "tiny"
    with atomic_directory(final, PROVENANCE_FILE) as folder:
        (folder / PROVENANCE_FILE).write_text("0")
    missing: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if not (final / PROVENANCE_FILE).exists():
                missing.append(1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for round_number in range(1, 300):
            with atomic_directory(final, PROVENANCE_FILE) as folder:
                (folder / PROVENANCE_FILE).write_text(str(round_number))
    finally:
        stop.set()
        watcher.join()
    assert missing == []
    assert (final / PROVENANCE_FILE).read_text() == "299"


def test_check_writable_creates_nothing(tmp_path: Path) -> None:
    check_writable(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.docker
def test_sigterm_stops_every_model_of_a_parallel_build(
        standin, standin_image: str, tiny_qwen2: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, docker_engine) -> None:
    slow = standin_toolchain(standin_image, WEBSLM_STANDIN_SLEEP="convert_weight:120")
    monkeypatch.setattr("webslm.toolchain.current_toolchain", lambda: slow)
    mine = {"label": f"{OWNER_LABEL}={owner_token()}"}

    watcher = interrupt_when(lambda: len(running(docker_engine, mine)) >= 2,
                             signum=signal.SIGTERM)
    specs = [resolve_spec(model=str(tiny_qwen2), name=name) for name in ("a", "b")]
    options = BuildOptions(out=tmp_path / "dist", show_progress=False)
    with pytest.raises(Terminated), sigterm_unwinds():
        build_many(specs, options, jobs=2)
    assert seconds_after_firing(watcher) < 30
    watcher.join()
    assert docker_engine.containers.list(all=True, filters=mine) == []
    assert not (tmp_path / "dist").exists() or list((tmp_path / "dist").iterdir()) == []


def test_several_models_are_all_checked_before_any_starts(no_toolchain_needed: None,
                                                          tiny_qwen2: Path,
                                                          tmp_path: Path) -> None:
    model = copy_model(tiny_qwen2, tmp_path / "second")
    specs = [resolve_spec(model=str(tiny_qwen2), name="first"),
             resolve_spec(model=str(model), name="second")]
    with pytest.raises(BadInput, match="is the model folder"):
        build_many(specs, BuildOptions(out=tmp_path, show_progress=False), jobs=1)
    assert not (tmp_path / "first").exists()
