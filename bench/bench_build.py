"""Build pipeline: cold build sequential against overlapped; cache-hit rebuild against a cold
build; provenance hashing against sha256sum.

Goals: the overlapped cold build (convert_weight beside gen_config -> compile) bounded by its
longer branch, i.e. <= ~0.55x the sequential one at the real stage proportions; a cache-hit
rebuild in <= 1 s plus hashing (a hit re-hashes the cache entries it
serves: that is hashing too); hashing >= 0.8x the speed of sha256sum.
The builds run in the TEST STAND-IN toolchain image (the real MLC-LLM image is not needed to time
the pipeline's own work: containers, scheduling, cache, packaging). Limitation: the stand-in
lives under tests/standin/ (stand-ins live only under tests/), so this bench imports its image
builder and the tiny-model writer from tests/ and cannot run from an installed package.
The overlap figures use the real-tiny fixture model (../shared/fixtures/real-tiny) with stand-in
stages made to sleep the real MLC-LLM v0.19.0 stage times (Qwen2.5-0.5B architecture, q4f16_1,
2 cores: convert_weight 37 s, gen_config < 1 s, compile 39 s), scaled by --time-scale.
Run: python bench/bench_build.py [--time-scale 0.25] [--hash-gib 1] [--weights-mib 256]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from standin.image import ensure_standin_image, standin_toolchain  # noqa: E402
from tinymodels import make_tiny_model  # noqa: E402

from webslm.baseimage import LIVE_MIRROR, ensure_base_image  # noqa: E402
from webslm.cache import default_cache_dir  # noqa: E402
from webslm.packaging import copy_files  # noqa: E402
from webslm.pipeline import BuildOptions, build_model  # noqa: E402
from webslm.provenance import hash_files, list_files  # noqa: E402
from webslm.spec import resolve_spec  # noqa: E402
from webslm.toolchain import docker_client, load_lock  # noqa: E402

FILE_MIB = 128
REAL_TINY_MODEL = REPO.parent / "shared" / "fixtures" / "real-tiny" / "model"
# Real MLC-LLM v0.19.0 stage times, seconds (real-tiny/README.md, issue 17).
REAL_STAGE_SECONDS = {"convert_weight": 37.0, "gen_config": 0.5, "compile": 39.0}


def live_base_image(client) -> str:
    """The lock's mmdebstrap base made from the live mirror (the snapshot is unreachable here)."""
    return ensure_base_image(client, load_lock().base.with_archives(*LIVE_MIRROR),
                             default_cache_dir())


def timed(action):
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def add_weights(model: Path, mib: int) -> None:
    """Pad the tiny model with one more (random) tensor so hashing and linking have real size."""
    import numpy
    from safetensors.numpy import save_file

    if mib > 0:
        rows = mib * 1024
        data = numpy.frombuffer(os.urandom(rows * 1024), dtype=numpy.uint8).reshape(rows, 1024)
        save_file({"bench.padding.weight": data}, str(model / "model-padding.safetensors"))


def bench_rebuild(scratch: Path, weights_mib: int) -> None:
    client = docker_client()
    toolchain = standin_toolchain(ensure_standin_image(client, live_base_image(client)))
    model = make_tiny_model(scratch / "model", "qwen2")
    add_weights(model, weights_mib)
    spec = resolve_spec(model=str(model), name="bench-tiny")
    options = BuildOptions(out=scratch / "dist", toolchain=toolchain, cache_dir=scratch / "cache",
                           show_progress=False)
    cold, first = timed(lambda: build_model(spec, options))
    warm, second = timed(lambda: build_model(spec, options))
    assert all(second.cache_hits[s] for s in ("stage", "convert_weight", "gen_config", "compile"))
    assert second.stage_digests == first.stage_digests
    files = list_files(second.dist)
    entries = verified_entries(scratch / "cache" / "stages")
    size = sum((model / f).stat().st_size for f in list_files(model)) + sum(
        (e / f).stat().st_size for e in entries for f in list_files(e))
    hashing, _ = timed(lambda: (hash_files(model, list_files(model)),
                                [hash_files(e, list_files(e)) for e in entries]))
    copied, linked = copy_against_link(second.dist, files, scratch)
    print(f"== rebuild (tiny qwen2 + {weights_mib} MiB of weights, stand-in toolchain image, "
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


def bench_overlap(scratch: Path, time_scale: float) -> None:
    """One cold build one stage after another, one as the graph; same bytes, both timed."""
    client = docker_client()
    seconds = {stage: t * time_scale for stage, t in REAL_STAGE_SECONDS.items()}
    sleep = ",".join(f"{stage}:{t:.3f}" for stage, t in seconds.items())
    toolchain = standin_toolchain(ensure_standin_image(client, live_base_image(client)),
                                  WEBSLM_STANDIN_SLEEP=sleep)
    model = shutil.copytree(REAL_TINY_MODEL, scratch / "real-tiny")
    spec = resolve_spec(model=str(model), name="bench-graph")
    walls = {}
    results = {}
    for overlap in (False, True):
        options = BuildOptions(out=scratch / f"dist-{overlap}", toolchain=toolchain,
                               cache_dir=scratch / "cache-graph", use_cache=False,
                               show_progress=False, overlap=overlap)
        walls[overlap], results[overlap] = timed(lambda o=options: build_model(spec, o))
    same = all(hash_files(r.dist, list_files(r.dist)) == hash_files(
        results[False].dist, list_files(results[False].dist)) for r in results.values())
    assert same and results[True].stage_digests == results[False].stage_digests
    line = seconds["convert_weight"] + seconds["gen_config"] + seconds["compile"]
    longer = max(seconds["convert_weight"], seconds["gen_config"] + seconds["compile"])
    print(f"== cold build, sequential vs overlapped (real-tiny model, stand-in stages sleeping "
          f"the real stage times x {time_scale}: convert {seconds['convert_weight']:.2f} s, "
          f"gen_config {seconds['gen_config']:.2f} s, compile {seconds['compile']:.2f} s; "
          "no cache; one run each; outputs byte-identical)")
    print(f"{'':22}{'wall':>10}{'stage sleeps':>14}{'overhead':>10}")
    print(f"sequential            {walls[False]:8.3f} s  {line:10.2f} s  "
          f"{walls[False] - line:6.2f} s")
    print(f"overlapped (graph)    {walls[True]:8.3f} s  {longer:10.2f} s  "
          f"{walls[True] - longer:6.2f} s")
    print(f"overlapped/sequential {walls[True] / walls[False]:8.2f}x   "
          f"(bound: {longer / line:.2f}x; at the real times 80 s -> "
          f"~{REAL_STAGE_SECONDS['gen_config'] + REAL_STAGE_SECONDS['compile']:.0f} s + overhead, "
          "goal <= 45 s)")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-scale", type=float, default=0.25,
                        help="fraction of the real MLC-LLM stage times the stand-in stages sleep")
    parser.add_argument("--hash-gib", type=float, default=1.0)
    parser.add_argument("--weights-mib", type=int, default=256,
                        help="weights added to the tiny model for the rebuild figures")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="webslm-bench-") as scratch:
        bench_overlap(Path(scratch), args.time_scale)
        bench_rebuild(Path(scratch), args.weights_mib)
        bench_hashing(Path(scratch), args.hash_gib)


if __name__ == "__main__":
    main()
