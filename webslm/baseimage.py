"""The Debian base image of the toolchain, made locally with mmdebstrap: no registry involved.

What defines the base is a `BaseRecipe`, read from the lock: the suite, the (snapshot) archive and
its security archive, the mmdebstrap variant and SOURCE_DATE_EPOCH. mmdebstrap with a fixed
SOURCE_DATE_EPOCH makes the root-filesystem tarball byte-identical run to run, and the tarball is
wrapped in a docker-archive whose config has a fixed `created`, so `docker load` gives the same
image ID every time (`docker import` would stamp the import time). The same archive file is what
the Nix image (nix/image.nix) starts from.

Tests, which cannot reach snapshot.debian.org, make the base through this same path with the
archive URLs swapped for the live mirror (`BaseRecipe.with_archives`); the swapped recipe has
another key, so the two images never share a tag.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from webslm.container import image_exists
from webslm.errors import MissingEnvironment, StageFailed
from webslm.files import sha256_bytes, sha256_file

BASE_REPOSITORY = "webslm-base"
# The live Debian mirror: what tests and benchmarks make the base from where the snapshot archive
# is unreachable (never the product's path: the lock's snapshot is).
LIVE_MIRROR = ("http://deb.debian.org/debian", "http://deb.debian.org/debian-security")
# Files mmdebstrap copies from the host; removed so the tarball does not depend on the host.
HOST_FILES = ("etc/resolv.conf", "etc/hostname")


@dataclass(frozen=True)
class BaseRecipe:
    """Everything that defines the base root filesystem (all of it comes from the lock)."""

    suite: str
    archive: str
    security_archive: str
    variant: str
    source_date_epoch: int

    @classmethod
    def from_lock(cls, data: Mapping[str, Any]) -> BaseRecipe:
        debian = data["debian"]
        return cls(suite=str(debian["suite"]), archive=str(debian["archive"]),
                   security_archive=str(debian["security_archive"]),
                   variant=str(debian["base_variant"]),
                   source_date_epoch=int(data["source_date_epoch"]))

    def with_archives(self, archive: str, security_archive: str) -> BaseRecipe:
        """The same recipe over other archives (the live mirror, where no snapshot is reachable)."""
        return replace(self, archive=archive, security_archive=security_archive)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def key(self) -> str:
        """sha256 of the recipe and the exact mmdebstrap command it runs."""
        material = {"recipe": self.to_json(), "command": mmdebstrap_command(self, Path("ROOTFS"))}
        return sha256_bytes(json.dumps(material, sort_keys=True).encode())

    @property
    def tag(self) -> str:
        return f"{BASE_REPOSITORY}:{self.key[:12]}"

    def sources(self) -> list[str]:
        """One-line apt sources: the suite, its updates and its security archive."""
        option = "[check-valid-until=no]"
        return [f"deb {option} {self.archive} {self.suite} main",
                f"deb {option} {self.archive} {self.suite}-updates main",
                f"deb {option} {self.security_archive} {self.suite}-security main"]


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI/Docker image config we set; everything else is fixed."""

    diff_id: str
    created_epoch: int
    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    cmd: tuple[str, ...] = ("/bin/bash",)

    def to_json(self) -> bytes:
        created = datetime.fromtimestamp(self.created_epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        config = {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {"Env": list(self.env), "Cmd": list(self.cmd)},
            "rootfs": {"type": "layers", "diff_ids": [self.diff_id]},
            "history": [{"created": created, "created_by": "webslm.baseimage (mmdebstrap)"}],
        }
        return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def write_docker_archive(rootfs_tar: Path, archive: Path, tag: str, created_epoch: int) -> str:
    """Wrap a root-filesystem tarball as a loadable docker-archive; return the image ID."""
    diff_id = "sha256:" + sha256_file(rootfs_tar)
    config = ImageConfig(diff_id=diff_id, created_epoch=created_epoch).to_json()
    image_id = hashlib.sha256(config).hexdigest()
    manifest = [{"Config": f"{image_id}.json", "RepoTags": [tag], "Layers": ["layer/layer.tar"]}]

    def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), created_epoch, 0o644
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        add_bytes(tar, f"{image_id}.json", config)
        add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
        layer = tar.gettarinfo(str(rootfs_tar), arcname="layer/layer.tar")
        layer.mtime, layer.uid, layer.gid, layer.uname, layer.gname = created_epoch, 0, 0, "", ""
        with open(rootfs_tar, "rb") as handle:
            tar.addfile(layer, handle)
    return "sha256:" + image_id


def mmdebstrap_command(recipe: BaseRecipe, rootfs_tar: Path) -> list[str]:
    """The mmdebstrap call that makes the recipe's minimal, reproducible root filesystem tarball."""
    removed = " ".join(f'"$1"/{name}' for name in HOST_FILES)
    return [
        "mmdebstrap",
        f"--variant={recipe.variant}",
        f"--customize-hook=rm -f {removed}",
        recipe.suite,
        str(rootfs_tar),
        *recipe.sources(),
    ]


def base_archive_path(recipe: BaseRecipe, cache_dir: Path) -> Path:
    """Where the docker-archive of a recipe is kept (the Nix image starts from this file)."""
    return cache_dir / "base" / f"{recipe.key[:12]}.tar"


def ensure_base_image(client: Any, recipe: BaseRecipe, cache_dir: Path) -> str:
    """Return the recipe's tag, first making and loading the image when the engine lacks it."""
    if image_exists(client, recipe.tag):
        return recipe.tag
    if shutil.which("mmdebstrap") is None:
        raise MissingEnvironment(f"image {recipe.tag} is absent and mmdebstrap is not installed",
                                 "install it with `apt-get install -y mmdebstrap` (needs root)")
    archive = base_archive_path(recipe, cache_dir)
    if not archive.is_file():
        _make_archive(recipe, archive)
    with open(archive, "rb") as handle:
        client.images.load(handle.read())
    return recipe.tag


def _make_archive(recipe: BaseRecipe, archive: Path) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="webslm-base-", dir=archive.parent) as scratch:
        rootfs = Path(scratch) / "rootfs.tar"
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(recipe.source_date_epoch)}
        result = subprocess.run(mmdebstrap_command(recipe, rootfs), env=env, capture_output=True,
                                text=True, check=False)
        if result.returncode != 0:
            tail = " | ".join(result.stderr.strip().splitlines()[-3:])
            raise StageFailed(f"mmdebstrap failed: {tail}",
                              f"check that {recipe.archive} serves {recipe.suite}")
        partial = Path(scratch) / "image.tar"
        write_docker_archive(rootfs, partial, recipe.tag, recipe.source_date_epoch)
        partial.replace(archive)
