"""Print a pip constraints file that pins every runtime dependency at its floor (`>=X` -> `==X`).

The floors job (.github/workflows/floors.yml) installs webslm under these pins and runs the fast
tests, so a floor in pyproject.toml is a version the code is known to work with. The `test` extra
(linters, pytest) is left out: it is tooling, not what a user installs. A dependency must have one
`>=` floor, the same in every place it is listed.
Run: python .ci/floors.py [pyproject.toml] > floors.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

REQUIREMENT = re.compile(r"(?P<name>[A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*>=\s*(?P<floor>[^,;\s]+)")
TOOLING_EXTRAS = frozenset({"test"})


def floors(project: dict) -> dict[str, str]:
    """Normalized package name -> floor version, over the dependencies and non-test extras."""
    requirements = [*project["dependencies"],
                    *(requirement for extra, listed in project["optional-dependencies"].items()
                      if extra not in TOOLING_EXTRAS for requirement in listed)]
    found: dict[str, str] = {}
    for requirement in requirements:
        match = REQUIREMENT.fullmatch(requirement.strip())
        if match is None:
            raise ValueError(f"{requirement!r} is not NAME>=FLOOR; give it one >= floor")
        name = re.sub(r"[-_.]+", "-", match["name"]).lower()
        if found.setdefault(name, match["floor"]) != match["floor"]:
            raise ValueError(f"{name} has two floors ({found[name]} and {match['floor']}); "
                             "list it with the same floor everywhere")
    return found


def constraints(project: dict) -> str:
    return "".join(f"{name}=={floor}\n" for name, floor in sorted(floors(project).items()))


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")
    sys.stdout.write(constraints(tomllib.loads(path.read_text(encoding="utf-8"))["project"]))
