"""The pinned toolchain image: the contract the pipeline and verify use.

`Toolchain` is the image the container stages run in and what provenance records of it;
`current_toolchain()` is the one this checkout's lock names; `docker_client()` and `image_exists()`
(from webslm.container, where all Docker code lives) are the engine. The
parts behind it: `lock` (the lock, the ID, the build arguments: pure), `build` (building, pulling
and pushing the image, `webslm toolchain`), `refresh` (`refresh-lock` on a networked machine).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from webslm.container import StageImage, docker_client, image_exists
from webslm.toolchain.lock import (
    DOCKER_DIR,
    LOCK_NAME,
    SECCOMP_NAME,
    ToolchainLock,
    build_args,
    determinism_env,
    image_tag,
    load_lock,
    toolchain_id,
)

__all__ = ["DOCKER_DIR", "LOCK_NAME", "Toolchain", "ToolchainLock", "build_args",
           "chosen_or_current", "current_toolchain", "determinism_env", "docker_client",
           "image_exists", "image_tag", "load_lock", "toolchain_id"]


@dataclass(frozen=True)
class Toolchain:
    """The image the pipeline's container stages run in, and what provenance records of it."""

    id: str
    image: str
    lock_digest: str
    webllm_version: str
    env: Mapping[str, str]
    seccomp_profile: Path | None

    def stage_image(self) -> StageImage:
        """What the container layer runs: the image with the lock's environment and profile."""
        return StageImage(ref=self.image, env=self.env, seccomp_profile=self.seccomp_profile)


def current_toolchain(docker_dir: Path = DOCKER_DIR) -> Toolchain:
    """The toolchain the working tree's docker/ describes (the image may not be built yet)."""
    lock = load_lock(docker_dir)
    identifier = toolchain_id(docker_dir)
    seccomp = docker_dir / SECCOMP_NAME
    return Toolchain(
        id=identifier,
        image=image_tag(identifier),
        lock_digest=lock.digest,
        webllm_version=lock.webllm_version,
        env=determinism_env(lock),
        seccomp_profile=seccomp if seccomp.is_file() else None,
    )


def chosen_or_current(chosen: Toolchain | None) -> Toolchain:
    """The toolchain a caller chose (tests, verify), else the one this checkout's lock names."""
    return chosen if chosen is not None else current_toolchain()
