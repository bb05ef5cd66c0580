"""`webslm bench [NAME]`: run one of the benchmark scripts in bench/ (bench/bench_NAME.py).

Benchmarks print their figures side by side; results worth keeping go to bench/RESULTS.md.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from webslm.checkout import checkout_path, require
from webslm.errors import BadInput

BENCH_DIR = checkout_path("bench")


def available() -> dict[str, Path]:
    """Benchmark name → script, for every bench/bench_*.py."""
    return {p.stem.removeprefix("bench_"): p for p in sorted(require(BENCH_DIR).glob("bench_*.py"))}


def summary(script: Path) -> str:
    """The first line of a benchmark script's docstring."""
    doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
    return doc.splitlines()[0] if doc else ""


def bench_command(name: str | None) -> int:
    benches = available()
    if name is None:
        width = max(map(len, benches), default=0)
        for bench_name, script in benches.items():
            print(f"{bench_name:{width}}  {summary(script)}")
        return 0
    if name not in benches:
        raise BadInput(f"no benchmark {name!r}", "choose one of: " + (", ".join(benches) or "none"))
    return subprocess.call([sys.executable, str(benches[name])])
