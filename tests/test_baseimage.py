"""The locally made Debian base image: real mmdebstrap, real Docker engine, reproducible ID."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from webslm.baseimage import (
    BaseRecipe,
    base_archive_path,
    mmdebstrap_command,
    write_docker_archive,
)
from webslm.cache import default_cache_dir
from webslm.toolchain import load_lock


def small_rootfs(path: Path, content: bytes) -> Path:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("etc/marker")
        info.size, info.mtime = len(content), 0
        tar.addfile(info, io.BytesIO(content))
    return path


def test_docker_archive_image_id_depends_only_on_the_rootfs(tmp_path: Path) -> None:
    rootfs = small_rootfs(tmp_path / "a.tar", b"one")
    first = write_docker_archive(rootfs, tmp_path / "1.tar", "t:1", 1739232000)
    second = write_docker_archive(rootfs, tmp_path / "2.tar", "t:1", 1739232000)
    assert first == second
    assert (tmp_path / "1.tar").read_bytes() == (tmp_path / "2.tar").read_bytes()
    other = write_docker_archive(small_rootfs(tmp_path / "b.tar", b"two"), tmp_path / "3.tar",
                                 "t:1", 1739232000)
    assert other != first
    with tarfile.open(tmp_path / "1.tar") as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == ["t:1"] and manifest[0]["Config"] == first[7:] + ".json"


def test_mmdebstrap_command_strips_host_specific_files(tmp_path: Path) -> None:
    recipe = BaseRecipe(suite="bookworm", archive="http://a/debian", security_archive="http://a/s",
                        variant="minbase", source_date_epoch=1739232000)
    command = mmdebstrap_command(recipe, tmp_path / "r.tar")
    assert command[:2] == ["mmdebstrap", "--variant=minbase"]
    assert any("etc/resolv.conf" in part and "etc/hostname" in part for part in command)
    assert command[-3:] == recipe.sources()
    assert recipe.sources()[2].endswith("http://a/s bookworm-security main")


@pytest.mark.docker
def test_a_container_runs_from_the_local_base_image(docker_engine, debian_base_image) -> None:
    output = docker_engine.containers.run(
        debian_base_image, ["sh", "-c", "cat /etc/debian_version; id -u"],
        remove=True, network_disabled=True, user="1234:1234",
    ).decode()
    version, uid = output.split()
    assert version.startswith("12.") and uid == "1234"
    image = docker_engine.images.get(debian_base_image)
    assert image.attrs["Created"].startswith("2025-02-11")


@pytest.mark.docker
def test_the_base_image_is_tagged_by_its_recipe_and_kept_as_one_archive(
        docker_engine, debian_base_image, live_base) -> None:
    """The live-mirror base used here and the product's snapshot base share one code path and
    differ in tag; the loaded image is the kept docker-archive (the file Nix starts from)."""
    assert debian_base_image == live_base.tag != load_lock().base.tag
    archive = base_archive_path(live_base, default_cache_dir())
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == [live_base.tag]
    image_id = docker_engine.images.get(debian_base_image).id
    assert image_id == "sha256:" + manifest[0]["Config"].removesuffix(".json")
