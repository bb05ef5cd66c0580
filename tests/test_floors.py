"""The dependency floors: .ci/floors.py turns every runtime `>=` floor of pyproject.toml into a pin,
and the floors workflow installs under those pins and runs the fast tests."""

from __future__ import annotations

import tomllib
from types import ModuleType

import pytest
import yaml
from conftest import REPO_ROOT, load_script


def floors_script() -> ModuleType:
    return load_script(REPO_ROOT / ".ci" / "floors.py")


PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def test_every_runtime_dependency_is_pinned_at_its_floor() -> None:
    pins = dict(line.split("==") for line in floors_script().constraints(PROJECT).splitlines())
    assert pins["transformers"] == "5.23" and pins["torch"] == "2.11"
    assert pins["huggingface-hub"] == "2.2" and pins["httpx2"] == "2.0"
    runtime = [*PROJECT["dependencies"], *PROJECT["optional-dependencies"]["finetune"],
               *PROJECT["optional-dependencies"]["check"]]
    assert len(pins) == len({r.split(">=")[0].lower().replace("_", "-") for r in runtime})
    assert "pytest" not in pins and "ruff" not in pins  # tooling is not a runtime floor


@pytest.mark.parametrize(("dependencies", "message"), [
    (["torch"], "is not NAME>=FLOOR"),
    (["torch<3"], "is not NAME>=FLOOR"),
    (["torch>=2.10", "Torch>=2.9"], "torch has two floors"),
])
def test_a_dependency_without_one_floor_is_refused(dependencies: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        floors_script().floors({"dependencies": dependencies, "optional-dependencies": {}})


def test_the_floors_workflow_runs_the_floors_script() -> None:
    workflow = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "floors.yml").read_text())
    runs = [step.get("run", "") for step in workflow["jobs"]["floors"]["steps"]]
    assert "bash .ci/floors" in runs
    assert ".ci/floors" in workflow[True]["push"]["paths"]  # yaml reads `on:` as True


def test_the_floors_script_installs_the_pins_in_a_fresh_venv_and_runs_the_fast_tests() -> None:
    script = (REPO_ROOT / ".ci" / "floors").read_text()
    assert 'rm -rf "$venv"' in script and 'python3 -m venv "$venv"' in script
    assert 'python3 .ci/floors.py pyproject.toml > "$venv/floors.txt"' in script
    assert 'pip" install -q -c "$venv/floors.txt"' in script
    assert '-m "not docker and not browser"' in script
