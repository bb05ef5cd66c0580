"""bench/bench_web_integrity.py on a TEST STAND-IN dist (fakedist.py: the real layout and
AppConfig, random shards, an empty library that stops the engine right after the check): the
shard check's cost on a model of a chosen size without building one.

Run from the repository root: python -m tests.browser.bench_web_integrity [--shards 8]
[--shard-mib 36] [--runs 3]
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.bench_web_integrity import report, runs_parser
from tests.browser.fakedist import make_fake_dist
from webslm.crash import exit_on_error

MIB = 1024 * 1024


def main(argv: Sequence[str] | None = None) -> None:
    parser = runs_parser(__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard-mib", type=int, default=36)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="webslm-bench-") as scratch:
        dist = make_fake_dist(Path(scratch) / "dist", "bench", shards=args.shards,
                              shard_bytes=args.shard_mib * MIB)
        exit_on_error("tests.browser.bench_web_integrity",
                      lambda: report(dist, args.runs, "TEST STAND-IN dist (random shards)"))


if __name__ == "__main__":
    main()
