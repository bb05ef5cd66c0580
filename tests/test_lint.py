"""Code quality gates that CI enforces: ruff over every Python file, mypy over webslm/, hadolint on
the Dockerfile. The rule sets are in pyproject.toml ([tool.ruff], [tool.mypy]); each gate is also
shown to catch what it is configured for, so a configuration that checks nothing cannot pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

PYTHON_TREES = ["webslm", "tests", "tasks.py", "bench", "finetune", "docker", ".ci"]


def ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise",
                           *args], cwd=REPO_ROOT, input=stdin, capture_output=True, text=True,
                          check=False)


def mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False)


def test_ruff_finds_nothing() -> None:
    result = ruff(*PYTHON_TREES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_checks_annotations_and_every_noqa_in_webslm() -> None:
    """webslm is typed (ANN), and a noqa naming a rule that is not checked is itself an error."""
    probe = "def double(x):\n    return 2 * x  # noqa: S101\n"
    result = ruff("--stdin-filename", "webslm/probe.py", "-", stdin=probe)
    assert result.returncode == 1
    for rule in ("ANN001", "ANN201", "RUF100"):
        assert rule in result.stdout, result.stdout


def test_mypy_finds_nothing_in_webslm() -> None:
    result = mypy()  # files and settings from [tool.mypy]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


def test_mypy_catches_a_type_error_and_a_stale_ignore(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("count: int = 'one'\nother: int = 2  # type: ignore[assignment]\n")
    result = mypy(str(probe))
    assert result.returncode == 1
    assert "[assignment]" in result.stdout and "Unused \"type: ignore\"" in result.stdout, \
        result.stdout
