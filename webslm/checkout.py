"""The one locator for the source checkout's files that webslm uses but does not ship.

webslm runs from a git clone (`pip install -e .`). Several commands read files that live beside
the package, not in it: the compile needs the toolchain's build context (docker/), `serve` and
`check` the web client (web/, built with its node_modules), `bench` the scripts in bench/,
`finetune` its training script (finetune/), and `verify` the lock's git history. They are not
package data on purpose: the build context's bytes are the toolchain's ID, the web client is
built by npm, and git history cannot be shipped. A non-editable install (`pip install .`) has
only webslm/; there every path below names a folder that is not there, and `require` turns that
into one line and exit 3, while the commands that need no checkout (spec, normalize, data check,
publish, audit) work as before.
"""

from __future__ import annotations

from pathlib import Path

from webslm.errors import MissingEnvironment

ROOT = Path(__file__).resolve().parent.parent
MARKERS = ("pyproject.toml", "tasks.py")  # both at the root of a webslm checkout


def is_checkout(root: Path = ROOT) -> bool:
    """Whether ROOT is a webslm checkout (not site-packages, where docker/ is the Docker SDK)."""
    return all((root / name).is_file() for name in MARKERS)


def checkout_path(*parts: str) -> Path:
    """A path in the checkout; not checked here (module constants are built at import), but
    by `require` where it is used."""
    return ROOT.joinpath(*parts)


def require(path: Path) -> Path:
    """PATH, unless it lies in a checkout that webslm was installed without."""
    if path.is_relative_to(ROOT) and not is_checkout():
        raise MissingEnvironment(
            f"webslm's {path.relative_to(ROOT).as_posix()}/ folder is not part of the installed "
            f"package (it lives in the source checkout, and {ROOT} is not one)",
            "run webslm from a git clone of its repository, installed with pip install -e CLONE"
        )
    return path
