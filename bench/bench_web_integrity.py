"""Web client: the cost of checking every weight shard (crypto.subtle SHA-256) as a model loads.

Side by side in one run, in headless Chromium (Debian's, driven by bench_web_integrity.mjs)
against the real `webslm serve` server on 127.0.0.1, for the model of a built dist folder:
  first load   the app's check (download, hash each shard as it arrives, put it in Cache Storage)
               against what web-llm does alone (Cache.add of each shard, four at a time);
  cached load  the app's check of the cached shards against reading them from Cache Storage;
  hashing      crypto.subtle.digest alone over the same bytes (the floor of the check's cost).
Only the check is timed; after it the app goes on loading the model (a real library compiles,
which takes a while on SwiftShader).
Run: python bench/bench_web_integrity.py [--dist DIST/NAME] [--runs 3]
With no built model of some size at hand, time a TEST STAND-IN dist (random shards in the real
layout; its empty library stops the engine right after the check):
     python -m tests.browser.bench_web_integrity [--shards 8] [--shard-mib 36] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
from collections.abc import Sequence
from math import nan
from pathlib import Path

from webslm.chromium import CHROMIUM, browser_missing
from webslm.cli import DEFAULT_DIST
from webslm.crash import exit_on_error
from webslm.errors import BadInput, StageFailed
from webslm.layout import APP_CONFIG_FILE, SHARD_PREFIX
from webslm.provenance import list_files
from webslm.serve import (
    ServedModel,
    Site,
    ensure_web_bundle,
    find_models,
    model_url_path,
    serving_in_thread,
)
from webslm.webllm import read_app_config

RUNNER = Path(__file__).with_suffix(".mjs")
BROWSER_TIMEOUT_S = 3600
FIGURES = ("check_first", "hash_first", "webllm_first", "check_cached", "read_cached",
           "hash_only")


def only_model(dist: Path) -> tuple[ServedModel, str, list[str]]:
    """DIST's one model: where it is served, its model_id, its weight shards in order."""
    models = find_models([dist])
    if len(models) != 1:
        raise BadInput(f"{dist} holds {len(models)} models", "pass one model's folder, DIST/NAME")
    model = models[0]
    model_id = read_app_config(model.folder / APP_CONFIG_FILE).records[0].model_id
    if model_id is None:
        raise BadInput(f"{model.folder / APP_CONFIG_FILE} names no model_id",
                       "pass a dist folder made by `webslm build`")
    shards = sorted((n for n in list_files(model.folder) if n.startswith(SHARD_PREFIX)),
                    key=lambda n: int(n.removeprefix(SHARD_PREFIX).removesuffix(".bin")))
    if not shards:
        raise BadInput(f"{model.folder} has no {SHARD_PREFIX}*.bin", "pass a built dist folder")
    return model, model_id, shards


def measure(dist: Path, runs: int) -> dict[str, list[float]]:
    """Each figure's seconds, one per run, from the browser runner."""
    model, model_id, shards = only_model(dist)
    missing = browser_missing()
    if missing:
        raise missing
    with serving_in_thread(Site(web=ensure_web_bundle(), models=(model,))) as server:
        base = server.url
        request = {"base": base, "modelId": model_id, "runs": runs,
                   "shardUrls": [base.rstrip("/") + model_url_path(model.name, s) for s in shards]}
        done = subprocess.run(["node", str(RUNNER)], input=json.dumps(request), text=True,
                              capture_output=True, timeout=BROWSER_TIMEOUT_S, check=False,
                              env={**os.environ, "CHROMIUM": str(CHROMIUM)})
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise StageFailed(f"the browser run failed: {lines[-1] if lines else '?'}",
                          "open the dist with `webslm serve` to see the error in the page")
    figures: dict[str, list[float]] = json.loads(done.stdout)
    return figures


def report(dist: Path, runs: int, described: str) -> None:
    """Print the figures for DIST's model (DESCRIBED says what it is), median of RUNS."""
    figures = measure(dist, runs)
    model, _, shards = only_model(dist)
    total_mb = sum((model.folder / s).stat().st_size for s in shards) / 1e6
    median = {k: statistics.median(figures[k]) for k in FIGURES}
    print(f"model: {described}, {len(shards)} shards, {total_mb:.1f} MB; median of {runs} runs, "
          "headless Chromium, 127.0.0.1")
    print(f"{'':34}{'seconds':>9}{'MB/s':>9}")
    rows = [
        ("first load, web-llm alone", median["webllm_first"]),
        ("first load, app with shard check", median["check_first"]),
        ("  of which crypto.subtle hashing", median["hash_first"]),
        ("cached load, read Cache Storage", median["read_cached"]),
        ("cached load, app with shard check", median["check_cached"]),
        ("crypto.subtle SHA-256 alone", median["hash_only"]),
    ]
    for label, seconds in rows:
        rate = f"{total_mb / seconds:9.0f}" if seconds > 0 else f"{'-':>9}"
        print(f"{label:34}{seconds:9.2f}{rate}")
    first = median["check_first"] / median["webllm_first"] if median["webllm_first"] else nan
    cached = median["check_cached"] / median["read_cached"] if median["read_cached"] else nan
    print(f"first load:  check / web-llm alone = {first:.2f}x")
    print(f"cached load: check / plain read    = {cached:.2f}x")


def runs_parser(description: str) -> argparse.ArgumentParser:
    """The options every way of running this bench shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=3)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = runs_parser(__doc__.splitlines()[0])
    parser.add_argument("--dist", type=Path, default=Path(DEFAULT_DIST),
                        help="a built model's folder, or a dist folder of one model (default: "
                             f"{DEFAULT_DIST}, where `webslm build` writes)")
    args = parser.parse_args(argv)
    exit_on_error("bench_web_integrity", lambda: report(args.dist, args.runs, args.dist.name))


if __name__ == "__main__":
    main()
