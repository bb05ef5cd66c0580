"""Build pipeline: stage starts, sequential vs overlapped cold builds, cache hits, hashing.

Side by side: what each container stage pays before its tool works (the container and the
tool's imports), with the image's bytecode and with its packages' bytecode removed; a cold build
one stage after another against the build graph; a cache-hit rebuild against a cold build;
provenance hashing against sha256sum.

Goals: the overlapped cold build (convert_weight beside gen_config -> compile) bounded by its
longer branch, i.e. <= ~0.55x the sequential one at the real stage proportions; a cache-hit
rebuild in <= 1 s plus hashing (a hit re-hashes the cache entries it serves: that is hashing
too); hashing >= 0.8x the speed of sha256sum.

The builds run in the toolchain image given (default: the one this checkout's lock names, made
by `webslm toolchain`) on the model given (default: the real-tiny fixture's model,
tests/fixtures/real-tiny/model). Each stage is timed as the pipeline runs it, so the overlap bound
comes from the stage times measured here, whatever the image.
Run: python bench/bench_build.py [--toolchain IMAGE] [--model PATH] [--hash-gib 1]
     [--weights-mib 256] [--start-repeats 5]
Without the real image (it cannot be built on a machine without GitHub), time the pipeline's own
work in the TEST STAND-IN image, stages sleeping the real stage times:
     python -m tests.standin.bench_build [--time-scale 0.25]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy
from safetensors.numpy import save_file

from webslm.checkout import checkout_path
from webslm.container import ContainerRun, Engine
from webslm.crash import exit_on_error
from webslm.errors import BadInput, MissingEnvironment
from webslm.packaging import copy_files
from webslm.pipeline import BuildOptions, BuildResult, Display, build_model
from webslm.provenance import hash_files, list_files
from webslm.spec import resolve_spec
from webslm.toolchain import Toolchain, current_toolchain, docker_client, image_exists

FILE_MIB = 128
REAL_TINY_MODEL = checkout_path("tests", "fixtures", "real-tiny", "model")
CONTAINER_STAGES = ("convert_weight", "gen_config", "compile")
# Run in the image, as root, to make it again without the bytecode of its Python's packages
# (what the image shipped before issue 31): the bench's "none" column.
STRIP_BYTECODE = ("import pathlib, shutil, site; caches = [cache for folder in "
                  "site.getsitepackages() for cache in pathlib.Path(folder).rglob('__pycache__')]; "
                  "[shutil.rmtree(cache) for cache in caches]")


class StageClock(Display):
    """A silent build display that records how long each stage took, in seconds."""

    def __init__(self) -> None:
        super().__init__(enabled=False)
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, model_id: str, stage: str) -> Iterator[dict[str, bool]]:
        started = time.perf_counter()
        with super().stage(model_id, stage) as state:
            yield state
        self.seconds[stage] = time.perf_counter() - started


def shown(model: Path) -> str:
    """A model folder's last two names (real-tiny/model)."""
    return f"{model.parent.name}/{model.name}"


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def add_weights(model: Path, mib: int) -> None:
    """Pad the model with one more (random) tensor so hashing and linking have real size."""
    if mib > 0:
        rows = mib * 1024
        data = numpy.frombuffer(os.urandom(rows * 1024), dtype=numpy.uint8).reshape(rows, 1024)
        save_file({"bench.padding.weight": data}, str(model / "model-padding.safetensors"))


def image_without_bytecode(client: Any, image: str) -> str:
    """Tag of IMAGE with every __pycache__ of its Python's site-packages removed (built here, or
    the one a killed run left; bench_stage_start removes it when done)."""
    tag = f"webslm-bench-nobytecode:{str(client.images.get(image).id).split(':')[-1][:12]}"
    if not image_exists(client, tag):
        dockerfile = (f"FROM {image}\nUSER 0\n"
                      f"RUN {json.dumps(['python3', '-c', STRIP_BYTECODE])}\n")
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True,
                            forcerm=True)
    return tag


def start_seconds(engine: Engine, scratch: Path, argv: tuple[str, ...]) -> float:
    """Wall time of one stage container running ARGV, started as the pipeline starts a stage."""
    output = Path(tempfile.mkdtemp(prefix="start-", dir=scratch))
    job = ContainerRun(stage="start", model_id="bench", argv=argv, inputs={}, output=output,
                       log=output.with_suffix(".log"))
    return timed(lambda: engine.run(job))[0]


def bench_stage_start(scratch: Path, toolchain: Toolchain, repeats: int) -> None:
    """Each stage's overhead before its tool works: `mlc_llm STAGE --help` in a stage container
    (start, interpreter, the imports up to parsing its arguments), in the image as built and
    without its packages' bytecode; medians of interleaved runs."""
    shipped = toolchain.stage_image()
    engines = {"with": Engine(shipped)}
    client = docker_client()
    stripped = image_without_bytecode(client, toolchain.image)
    try:
        engines["without"] = Engine(dataclasses.replace(shipped, ref=stripped))
        commands = {"container alone": ("true",),
                    **{stage: ("mlc_llm", stage, "--help") for stage in CONTAINER_STAGES}}
        runs: dict[tuple[str, str], list[float]] = {}
        for _ in range(repeats):
            for label, argv in commands.items():
                for variant, engine in engines.items():
                    runs.setdefault((label, variant), []).append(
                        start_seconds(engine, scratch, argv))
    finally:
        client.images.remove(stripped)
    median = {key: statistics.median(times) for key, times in runs.items()}
    print(f"== stage start overhead ({toolchain.image}; median of {repeats} starts each; "
          "`mlc_llm STAGE --help` run as the pipeline runs a stage: the container, the "
          "interpreter and the imports up to parsing its arguments)")
    print(f"{'':22}{'bytecode':>10}{'none':>10}{'none/bytecode':>15}")
    for label in commands:
        bytecode, none = median[(label, "with")], median[(label, "without")]
        print(f"{label if label == 'container alone' else 'start ' + label:22}"
              f"{bytecode:8.3f} s{none:8.3f} s{none / bytecode:14.2f}x")


def bench_overlap(scratch: Path, toolchain: Toolchain, model: Path) -> None:
    """One cold build one stage after another, one as the graph; same bytes, both timed."""
    copy = shutil.copytree(model, scratch / "overlap-model")
    spec = resolve_spec(model=str(copy), name="bench-graph")
    walls: dict[bool, float] = {}
    results: dict[bool, BuildResult] = {}
    clocks: dict[bool, StageClock] = {}
    for overlap in (False, True):
        options = BuildOptions(out=scratch / f"dist-{overlap}", toolchain=toolchain,
                               cache_dir=scratch / "cache-graph", use_cache=False,
                               show_progress=False, overlap=overlap)
        clocks[overlap] = StageClock()
        walls[overlap], results[overlap] = timed(
            lambda o=options, c=clocks[overlap]: build_model(spec, o, display=c))
    dists = [hash_files(r.dist, list_files(r.dist)) for r in results.values()]
    assert dists[0] == dists[1] and results[True].stage_digests == results[False].stage_digests

    def line_and_branch(seconds: dict[str, float]) -> tuple[float, float]:
        convert, chat, library = (seconds[s] for s in CONTAINER_STAGES)
        return convert + chat + library, max(convert, chat + library)

    line, longer = line_and_branch(clocks[False].seconds)
    print(f"== cold build, sequential vs overlapped ({shown(model)}, {toolchain.image}; no "
          "cache; one run each; outputs byte-identical; a stage's time includes its container)")
    print(f"{'':22}{'wall':>10}" + "".join(f"{s:>16}" for s in CONTAINER_STAGES)
          + f"{'rest':>10}")
    for overlap, label in ((False, "sequential"), (True, "overlapped (graph)")):
        stages = clocks[overlap].seconds
        waited = line_and_branch(stages)[1 if overlap else 0]
        print(f"{label:22}{walls[overlap]:8.3f} s"
              + "".join(f"{stages[s]:14.2f} s" for s in CONTAINER_STAGES)
              + f"{walls[overlap] - waited:8.2f} s")
    print(f"overlapped/sequential {walls[True] / walls[False]:8.2f}x   (bound from the sequential "
          f"stage times: longer branch / all stages = {longer / line:.2f}x; goal <= 0.55x)")


def bench_rebuild(scratch: Path, toolchain: Toolchain, model: Path, weights_mib: int) -> None:
    copy = shutil.copytree(model, scratch / "rebuild-model")
    add_weights(copy, weights_mib)
    spec = resolve_spec(model=str(copy), name="bench-rebuild")
    options = BuildOptions(out=scratch / "dist", toolchain=toolchain, cache_dir=scratch / "cache",
                           show_progress=False)
    cold, first = timed(lambda: build_model(spec, options))
    warm, second = timed(lambda: build_model(spec, options))
    assert all(second.cache_hits[s] for s in ("stage", *CONTAINER_STAGES))
    assert second.stage_digests == first.stage_digests
    files = list_files(second.dist)
    entries = verified_entries(scratch / "cache" / "stages")
    size = sum((copy / f).stat().st_size for f in list_files(copy)) + sum(
        (e / f).stat().st_size for e in entries for f in list_files(e))
    hashing, _ = timed(lambda: (hash_files(copy, list_files(copy)),
                                [hash_files(e, list_files(e)) for e in entries]))
    copied, linked = copy_against_link(second.dist, files, scratch)
    print(f"== rebuild ({shown(model)} + {weights_mib} MiB of weights, {toolchain.image}, "
          "one run each)")
    print(f"cold build            {cold:8.3f} s")
    print(f"cache-hit rebuild     {warm:8.3f} s   ({cold / warm:.1f}x faster)")
    print(f"  hashing alone       {hashing:8.3f} s   ({size / 1e6:.1f} MB: the model's files "
          "for the keys, the cache entries a hit re-verifies)")
    print(f"  rebuild - hashing   {warm - hashing:8.3f} s   (goal <= 1 s)")
    print(f"  dist files copied   {copied:8.3f} s   (hard links, unsafe: {linked:.3f} s; "
          f"{copied / max(linked, 1e-9):.0f}x)")


def verified_entries(stages: Path) -> list[Path]:
    """The output folders a full cache hit re-hashes: every stage's but the staged model copy
    (checked only when a stage that misses reads it)."""
    return [entry / "out" for entry in sorted(stages.iterdir())
            if json.loads((entry / "entry.json").read_text())["key"]["stage"] != "stage"]


def copy_against_link(dist: Path, files: list[str], scratch: Path) -> tuple[float, float]:
    """Packaging's file placement: private copies (reflinks where possible) against links."""
    copies, links = scratch / "copies", scratch / "links"

    def link_all() -> None:
        for name in files:
            (links / name).parent.mkdir(parents=True, exist_ok=True)
            os.link(dist / name, links / name)

    copied, _ = timed(lambda: copy_files(dist, files, copies))
    linked, _ = timed(link_all)
    return copied, linked


def bench_hashing(scratch: Path, gib: float) -> None:
    folder = scratch / "hash"
    folder.mkdir()
    count = max(1, int(gib * 1024 // FILE_MIB))
    block = os.urandom(1 << 20)
    for index in range(count):
        with open(folder / f"part_{index}.bin", "wb") as handle:
            for _ in range(FILE_MIB):
                handle.write(block)
    names = list_files(folder)
    total = count * FILE_MIB * (1 << 20)
    subprocess.run(["cat", *names], cwd=folder, stdout=subprocess.DEVNULL, check=True)  # warm
    ours, digests = timed(lambda: hash_files(folder, names))
    theirs, output = timed(lambda: subprocess.run(["sha256sum", *names], cwd=folder, check=True,
                                                  capture_output=True, text=True).stdout)
    expected = {line.split()[1]: line.split()[0] for line in output.splitlines()}
    assert digests == expected
    ours_single, _ = timed(lambda: [hash_files(folder, [n]) for n in names])
    print(f"== hashing {total / (1 << 30):.2f} GiB in {count} files (page cache warm)")
    print(f"sha256sum             {theirs:8.3f} s   {total / theirs / 1e6:8.0f} MB/s")
    print(f"webslm (parallel)     {ours:8.3f} s   {total / ours / 1e6:8.0f} MB/s   "
          f"{theirs / ours:.2f}x sha256sum (goal >= 0.8x)")
    print(f"webslm (one thread)   {ours_single:8.3f} s   {total / ours_single / 1e6:8.0f} MB/s   "
          f"{theirs / ours_single:.2f}x sha256sum")


def run_benches(toolchain: Toolchain, model: Path, *, weights_mib: int, hash_gib: float,
                start_repeats: int) -> None:
    """Every figure of this bench, side by side, with builds in TOOLCHAIN from MODEL."""
    if start_repeats < 1:
        raise BadInput(f"--start-repeats {start_repeats} is no count of starts",
                       "pass --start-repeats 1 or more")
    if not (model / "config.json").is_file():
        missing = MissingEnvironment if model == REAL_TINY_MODEL else BadInput
        raise missing(f"no model at {model} (no config.json)",
                      "pass --model PATH, a local model folder (the default is the real-tiny "
                      "fixture at <repo>/tests/fixtures/real-tiny/model)")
    print(f"machine: {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="webslm-bench-") as scratch:
        bench_stage_start(Path(scratch), toolchain, start_repeats)
        bench_overlap(Path(scratch), toolchain, model)
        bench_rebuild(Path(scratch), toolchain, model, weights_mib)
        bench_hashing(Path(scratch), hash_gib)


def options_parser(description: str) -> argparse.ArgumentParser:
    """The options every way of running this bench shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", type=Path, default=REAL_TINY_MODEL,
                        help="local model folder to build (default: the real-tiny fixture)")
    parser.add_argument("--hash-gib", type=float, default=1.0)
    parser.add_argument("--weights-mib", type=int, default=256,
                        help="MiB of random weights added to a copy of the model, as one more "
                             "safetensors file, for the rebuild figures (0: the model as it is)")
    parser.add_argument("--start-repeats", type=int, default=5,
                        help="starts of each stage container, with and without bytecode, for the "
                             "start overhead medians")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = options_parser(__doc__.splitlines()[0])
    parser.add_argument("--toolchain", metavar="IMAGE",
                        help="image to run the stages in, built from this checkout's lock "
                             "(default: the lock's image, as `webslm toolchain check` names it)")
    args = parser.parse_args(argv)

    def bench() -> None:
        toolchain = current_toolchain()
        if args.toolchain:
            toolchain = dataclasses.replace(toolchain, image=args.toolchain)
        run_benches(toolchain, args.model, weights_mib=args.weights_mib, hash_gib=args.hash_gib,
                    start_repeats=args.start_repeats)

    exit_on_error("bench_build", bench)


if __name__ == "__main__":
    main()
