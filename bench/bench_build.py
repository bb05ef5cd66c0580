"""Build pipeline: cache-hit rebuild against a cold build; provenance hashing against sha256sum.

Goals: a cache-hit rebuild in <= 1 s plus hashing; hashing >= 0.8x the speed of sha256sum.
The build runs a tiny local Qwen2 in the TEST STAND-IN toolchain image (tests/standin/; the real
MLC-LLM image is not needed to time the pipeline's own overhead: containers, cache, packaging).
Run: python bench/bench_build.py [--hash-gib 1] [--weights-mib 256]
"""

from __future__ import annotations

import argparse
import os
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
from webslm.pipeline import BuildOptions, build_model  # noqa: E402
from webslm.provenance import hash_files, list_files  # noqa: E402
from webslm.spec import resolve_spec  # noqa: E402
from webslm.toolchain import docker_client, load_lock  # noqa: E402

FILE_MIB = 128


def timed(action):  # noqa: ANN001, ANN201
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
    base = ensure_base_image(client, load_lock().base.with_archives(*LIVE_MIRROR),
                             default_cache_dir())
    toolchain = standin_toolchain(ensure_standin_image(client, base))
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
    size = sum((second.dist / f).stat().st_size for f in files) + sum(
        (model / f).stat().st_size for f in list_files(model))
    hashing, _ = timed(lambda: (hash_files(second.dist, files),
                                hash_files(model, list_files(model))))
    print(f"== rebuild (tiny qwen2 + {weights_mib} MiB of weights, stand-in toolchain image, "
          "one run each)")
    print(f"cold build            {cold:8.3f} s")
    print(f"cache-hit rebuild     {warm:8.3f} s   ({cold / warm:.1f}x faster)")
    print(f"  hashing alone       {hashing:8.3f} s   ({size / 1e6:.1f} MB of inputs and outputs)")
    print(f"  rebuild - hashing   {warm - hashing:8.3f} s   (goal <= 1 s)")


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
    parser.add_argument("--hash-gib", type=float, default=1.0)
    parser.add_argument("--weights-mib", type=int, default=256,
                        help="weights added to the tiny model for the rebuild figures")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="webslm-bench-") as scratch:
        bench_rebuild(Path(scratch), args.weights_mib)
        bench_hashing(Path(scratch), args.hash_gib)


if __name__ == "__main__":
    main()
