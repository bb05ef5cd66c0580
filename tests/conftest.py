"""Shared fixtures: tiny local models and the locally made Debian base image.

Docker and browser tests never skip silently in CI (CI=true): a missing engine there is a failure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tinymodels import make_tiny_model  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(condition: bool, reason: str) -> None:
    """Skip on a developer machine without the component; fail in CI, where it must exist."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI must provide it: see .ci/setup)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_engine():  # noqa: ANN201
    """A connected Docker SDK client to the real engine."""
    from webslm.toolchain import docker_client

    from webslm.errors import MissingEnvironment

    try:
        client = docker_client()
    except MissingEnvironment as error:
        require(False, f"no Docker engine: {error.line()}")
    return client


@pytest.fixture(scope="session")
def debian_base_image(docker_engine) -> str:  # noqa: ANN001
    """Tag of the locally made Debian bookworm minbase image (built once, then cached by tag)."""
    from webslm.baseimage import ensure_debian_base

    return ensure_debian_base()


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 model folder; read-only for tests (copy before changing it)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-qwen2") / "model", "qwen2")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random model of every preset architecture, keyed by HF model_type."""
    from tinymodels import ARCHITECTURES

    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: make_tiny_model(root / arch, arch) for arch in ARCHITECTURES}
