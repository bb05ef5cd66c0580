"""Code quality gates that CI enforces: ruff over every Python file, hadolint on the Dockerfile."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO_ROOT

PYTHON_TREES = ["webslm", "tests", "tasks.py", "bench", "finetune", "docker"]


def test_ruff_finds_nothing() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise",
                             *PYTHON_TREES], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
