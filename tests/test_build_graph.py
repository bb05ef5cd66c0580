"""The build as a graph: convert_weight runs beside gen_config -> compile (issue 17).

Real Docker engine, TEST STAND-IN toolchain image (tests/standin/), whose test settings make a
stage sleep or fail. The overlapped build must give the sequential build's bytes and cache keys,
run both branches' containers at once, and stop (and remove) one branch's container when the
other fails. (Ctrl-C with both branches running: tests/test_build.py.)
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import (
    containers_of,
    digests,
    interrupt_when,
    running_stages,
    seconds_after_firing,
    unique_name,
)
from standin.image import standin_toolchain

from webslm.errors import StageFailed
from webslm.pipeline import BuildOptions, build_many, build_model
from webslm.spec import resolve_spec

pytestmark = pytest.mark.docker
LONG = "120"  # seconds: a stage that would outlive the test unless it is stopped


def watch_stages(engine, model_id: str, seen: list[set[str]], stop: threading.Event) -> None:
    while not stop.is_set():
        seen.append(running_stages(engine, model_id))
        time.sleep(0.05)


def test_the_overlapped_build_gives_the_sequential_bytes_and_runs_both_branches_at_once(
        standin_image: str, tiny_qwen2: Path, tmp_path: Path, docker_engine) -> None:
    slow = standin_toolchain(standin_image,
                             WEBSLM_STANDIN_SLEEP="convert_weight:8,gen_config:1,compile:1")
    spec = resolve_spec(model=str(tiny_qwen2), name=unique_name("graph"))
    results = {}
    seen: list[set[str]] = []
    for overlap in (False, True):
        options = BuildOptions(out=tmp_path / f"dist-{overlap}", toolchain=slow,
                               cache_dir=tmp_path / f"cache-{overlap}", show_progress=False,
                               overlap=overlap)
        stop = threading.Event()
        watcher = threading.Thread(target=watch_stages,
                                   args=(docker_engine, spec.model_id, seen if overlap else [],
                                         stop))
        watcher.start()
        try:
            results[overlap] = build_model(spec, options)
        finally:
            stop.set()
            watcher.join()
    sequential, overlapped = results[False], results[True]
    assert digests(overlapped.dist) == digests(sequential.dist)
    assert overlapped.stage_digests == sequential.stage_digests
    stages = [json.loads((r.dist / "provenance.json").read_text())["predicate"]
              ["buildDefinition"]["internalParameters"]["stages"] for r in results.values()]
    assert stages[0] == stages[1]  # same cache keys, same outputs
    assert any({"convert_weight", "gen_config"} <= s for s in seen)
    assert any({"convert_weight", "compile"} <= s for s in seen)


@pytest.mark.parametrize("failing, other", [("gen_config", "convert_weight"),
                                            ("convert_weight", "compile")])
def test_a_failing_branch_stops_the_other_and_removes_its_container(
        standin_image: str, tiny_qwen2: Path, tmp_path: Path, docker_engine,
        failing: str, other: str) -> None:
    spec = resolve_spec(model=str(tiny_qwen2), name=unique_name("graph-fail"))
    base = BuildOptions(out=tmp_path / "dist", toolchain=standin_toolchain(standin_image),
                        cache_dir=tmp_path / "cache", show_progress=False)
    previous = build_model(spec, base).dist
    before = digests(previous)
    broken = standin_toolchain(standin_image, WEBSLM_STANDIN_FAIL=failing,
                               WEBSLM_STANDIN_SLEEP=f"{other}:{LONG},{failing}:8")
    seen: list[set[str]] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_stages, args=(docker_engine, spec.model_id, seen, stop))
    watcher.start()
    started = time.monotonic()
    try:
        with pytest.raises(StageFailed) as failure:
            build_model(spec, replace(base, toolchain=broken))
    finally:
        stop.set()
        watcher.join()
    assert time.monotonic() - started < 60  # the other branch did not run its 120 s
    assert failure.value.line().startswith(f"{failing} failed for {spec.model_id}")
    assert any(other in s for s in seen)  # it was running when it was stopped
    assert containers_of(docker_engine, spec.model_id) == []
    assert digests(previous) == before


def test_ctrl_c_stops_every_model_built_at_once_and_keeps_their_dists(
        standin_image: str, tiny_qwen2: Path, tmp_path: Path, docker_engine) -> None:
    """With --jobs, builds run in worker threads; Ctrl-C reaches the main thread only."""
    specs = [resolve_spec(model=str(tiny_qwen2), name=unique_name(f"graph-jobs{i}"))
             for i in range(2)]
    base = BuildOptions(out=tmp_path / "dist", toolchain=standin_toolchain(standin_image),
                        cache_dir=tmp_path / "cache", show_progress=False)
    previous = [r.dist for r in build_many(specs, base, jobs=2)]
    before = [digests(d) for d in previous]
    slow = standin_toolchain(standin_image, WEBSLM_STANDIN_SLEEP=f"compile:{LONG}")

    watcher = interrupt_when(lambda: all(
        "compile" in running_stages(docker_engine, s.model_id) for s in specs))
    with pytest.raises(KeyboardInterrupt):
        build_many(specs, replace(base, toolchain=slow), jobs=2)
        pytest.fail(f"not interrupted: {watcher.report()}")
    assert seconds_after_firing(watcher) < 30
    watcher.join()
    assert [digests(d) for d in previous] == before
    assert all(containers_of(docker_engine, s.model_id) == [] for s in specs)
