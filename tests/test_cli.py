"""The CLI contract: usage errors are one line with exit 2, and `webslm` works as installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from webslm.cli import main


@pytest.mark.parametrize(
    "argv",
    [[], ["bogus"], ["build", "--jobs", "many"], ["toolchain", "explode"], ["publish", "dist"],
     ["build", "--preset", "qwen2.5-0.5b", "--model", "Org/X"]],
)
def test_usage_errors_are_one_line_and_exit_2(capsys, argv: list[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("webslm: error: ") and err.count("\n") == 1


def test_installed_console_script_runs() -> None:
    webslm = Path(sys.executable).parent / "webslm"
    assert webslm.exists(), "pip install -e . provides the webslm console script"
    result = subprocess.run([webslm, "spec", "--preset", "smollm2-135m"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0 and '"conv_template": "chatml"' in result.stdout
