"""webslm installed without its checkout (`pip install .`, not editable): the commands that need
the checkout's files (docker/, web/, bench/) exit 3 with one line that says so, and those that do
not (spec) work. A real install into a fresh venv, with --no-deps: the current venv's packages are
made visible to it by a .pth file, so nothing is downloaded but the build backend."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from webslm import checkout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `webslm` console script of a non-editable install, outside any checkout."""
    root = tmp_path_factory.mktemp("installed")
    source = root / "source"
    source.mkdir()
    shutil.copytree(REPO_ROOT / "webslm", source / "webslm",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "current-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                           "--no-deps", str(source)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return venv / "bin" / "webslm"


def run(webslm: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(webslm), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def test_the_installed_package_is_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    done = subprocess.run([str(installed.parent / "python"), "-c",
                           "import webslm.checkout as c; print(c.ROOT, c.is_checkout())"],
                          cwd=tmp_path, capture_output=True, text=True, check=True)
    root, is_checkout = done.stdout.split()
    assert root.endswith("site-packages") and is_checkout == "False"
    assert checkout.is_checkout()  # these tests themselves run in one


@pytest.mark.parametrize(("args", "folder"), [(["bench"], "bench"),
                                              (["toolchain", "id"], "docker")])
def test_a_command_that_needs_the_checkout_says_so_in_one_line(
        installed: Path, tmp_path: Path, args: list[str], folder: str) -> None:
    done = run(installed, *args, cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert done.stderr.count("\n") == 1 and done.stdout == ""
    assert f"webslm's {folder}/ folder is not part of the installed package" in done.stderr
    assert "pip install -e" in done.stderr


def test_a_command_that_needs_no_checkout_works(installed: Path, tmp_path: Path) -> None:
    done = run(installed, "spec", "--preset", "qwen2.5-0.5b", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert '"model": "Qwen/Qwen2.5-0.5B-Instruct"' in done.stdout
