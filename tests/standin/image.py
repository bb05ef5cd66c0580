"""Build (once, cached by tag) the TEST STAND-IN toolchain image and a Toolchain pointing at it.

The tag derives from the stand-in's files and the base image's ID, so editing the stand-in or
remaking the base makes a new image and an unchanged stand-in is never rebuilt. The Toolchain has
a fake 64-hex ID derived from the tag and its environment (another test setting is another
toolchain): the real ID belongs to the real image only.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

STANDIN_DIR = Path(__file__).resolve().parent
STANDIN_FILES = ("Dockerfile", "mlc_llm")
WEBLLM_VERSION = "0.2.79"
DETERMINISM_ENV = {"SOURCE_DATE_EPOCH": "1739232000", "TZ": "UTC", "LC_ALL": "C.UTF-8",
                   "PYTHONHASHSEED": "0"}


def standin_digest(base_image_id: str) -> str:
    digest = hashlib.sha256(base_image_id.encode())
    for name in STANDIN_FILES:
        digest.update(name.encode() + b"\0" + (STANDIN_DIR / name).read_bytes())
    return digest.hexdigest()


def _context() -> io.BytesIO:
    """The build context as a tar with fixed metadata (the script keeps its exec bit)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in STANDIN_FILES:
            data = (STANDIN_DIR / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o755
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def ensure_standin_image(client: Any, base_image: str) -> str:
    """The stand-in image's tag, building it from the local base image when absent."""
    import docker.errors

    digest = standin_digest(str(client.images.get(base_image).id))
    tag = f"webslm-standin:{digest[:16]}"
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        client.images.build(fileobj=_context(), custom_context=True, tag=tag, rm=True,
                            buildargs={"BASE": base_image})
    return tag


def standin_toolchain(tag: str, **env: str) -> Any:
    """A Toolchain running the stand-in image; extra env reaches the stand-in (test settings)."""
    from webslm.toolchain import Toolchain

    full_env = {**DETERMINISM_ENV, **env}
    described = json.dumps({"image": tag, "env": full_env}, sort_keys=True)
    return Toolchain(
        id=hashlib.sha256(b"standin-toolchain:" + described.encode()).hexdigest(),
        image=tag,
        lock_digest=hashlib.sha256(b"standin-lock").hexdigest(),
        webllm_version=WEBLLM_VERSION,
        env=full_env,
        seccomp_profile=None,
    )
