"""The Nix side reads the same lock: every .nix file parses, and the values Nix derives from
docker/toolchain.lock.json equal the Docker build arguments webslm.toolchain derives from it
(evaluated offline with Debian's nix-instantiate; nixpkgs is not needed for nix/lock.nix)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from webslm import toolchain

REPO = Path(__file__).resolve().parent.parent
NIX_FILES = sorted([REPO / "flake.nix", *(REPO / "nix").glob("*.nix")])


def _nix_instantiate() -> str:
    from conftest import require

    found = shutil.which("nix-instantiate")
    require(found is not None, "nix-instantiate is not installed (apt-get install nix-bin)")
    assert found is not None
    return found


def _eval(attribute: str) -> object:
    result = subprocess.run(
        [_nix_instantiate(), "--eval", "--strict", "--json", str(REPO / "nix/lock.nix"),
         "-A", attribute], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: p.name)
def test_every_nix_file_parses(path: Path) -> None:
    result = subprocess.run([_nix_instantiate(), "--parse", str(path)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_nix_build_args_equal_the_docker_build_args() -> None:
    python_args = toolchain.build_args(toolchain.load_lock(), "unused")
    python_args.pop("TOOLCHAIN_ID")
    python_args.pop("BASE_IMAGE")  # the local tag of the base: a hash webslm computes
    assert _eval("buildArgs") == python_args


def test_nix_reads_the_same_base_recipe_and_pulls_no_registry_image() -> None:
    assert _eval("baseRecipe") == toolchain.load_lock().base.to_json()
    image = (REPO / "nix" / "image.nix").read_text()
    assert "pullImage" not in image and "fromImage = baseArchive" in image


def test_nix_sees_the_same_placeholders_and_settings() -> None:
    lock = toolchain.load_lock()
    assert sorted(_eval("placeholders")) == sorted(lock.placeholders)
    assert _eval("determinismEnv") == toolchain.determinism_env(lock)
    assert _eval("webllmVersion") == lock.webllm_version


def test_no_nix_file_repeats_a_pin() -> None:
    lock = toolchain.load_lock()
    pins = {lock.data["source_date_epoch"], lock.webllm_version, lock.emscripten_version,
            lock.rust_toolchain, *lock.apt_packages.values(),
            *(pin.commit for pin in lock.sources)}
    for path in NIX_FILES:
        text = path.read_text()
        for pin in pins:
            assert str(pin) not in text, f"{path.name} repeats {pin}"
