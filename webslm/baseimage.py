"""A Debian base image made locally, for machines that cannot pull one from a registry.

`docker import` stamps the import time, so every import yields a new image ID. Wrapping the
root-filesystem tarball in a docker-archive (manifest + config with a fixed `created`) and
`docker load`-ing it yields the same ID every time the tarball is the same. mmdebstrap with a fixed
SOURCE_DATE_EPOCH makes that tarball byte-identical run to run.
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from webslm.errors import MissingEnvironment, StageFailed
from webslm.files import sha256_file

DEFAULT_BASE_TAG = "webslm-base:bookworm"
DEFAULT_SUITE = "bookworm"
DEFAULT_EPOCH = 1739232000  # 2025-02-11, the MLC-LLM v0.19.0 tag date
HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")


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


def mmdebstrap_command(rootfs_tar: Path, suite: str, sources: Path | None) -> list[str]:
    """The mmdebstrap call that makes a minimal, reproducible root filesystem tarball."""
    command = [
        "mmdebstrap",
        "--variant=minbase",
        "--customize-hook=rm -f \"$1\"/etc/resolv.conf \"$1\"/etc/hostname",
        suite,
        str(rootfs_tar),
    ]
    if sources is not None and sources.exists():
        command.append(str(sources))
    return command


def ensure_debian_base(
    tag: str = DEFAULT_BASE_TAG,
    suite: str = DEFAULT_SUITE,
    created_epoch: int = DEFAULT_EPOCH,
) -> str:
    """Return `tag`, first making the image with mmdebstrap when the engine lacks it."""
    from webslm.toolchain import docker_client

    client = docker_client()
    try:
        client.images.get(tag)
        return tag
    except Exception as error:  # docker.errors.ImageNotFound, without importing docker here
        if type(error).__name__ != "ImageNotFound":
            raise
    if shutil.which("mmdebstrap") is None:
        raise MissingEnvironment(
            f"image {tag} is absent and mmdebstrap is not installed",
            "install it with `apt-get install -y mmdebstrap` (needs root)",
        )
    with tempfile.TemporaryDirectory(prefix="webslm-base-") as scratch:
        rootfs = Path(scratch) / "rootfs.tar"
        archive = Path(scratch) / "image.tar"
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(created_epoch)}
        result = subprocess.run(
            mmdebstrap_command(rootfs, suite, HOST_SOURCES),
            env=env, capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            tail = " | ".join(result.stderr.strip().splitlines()[-3:])
            raise StageFailed(f"mmdebstrap failed: {tail}", "check the Debian mirror is reachable")
        write_docker_archive(rootfs, archive, tag, created_epoch)
        with open(archive, "rb") as handle:
            client.images.load(handle.read())
    return tag
