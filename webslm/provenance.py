"""provenance.json: an in-toto Statement v1 with a SLSA provenance v1 predicate, and file hashing.

The statement says which files a build produced (subjects, with sha256) and from what: the spec
and the model's id and revision (external parameters), every input file's digest, the toolchain
ID, the image digest and the lock digest (resolved dependencies), and each stage's cache key and
output digest (internal parameters; `verify` uses them to name the first stage that differs).

Nothing in it varies between identical builds: no times, no host names, no build folders, keys
sorted, fixed separators. Subjects are every file of the package except two:
- provenance.json itself (it cannot hold its own hash);
- webllm-app-config.json, which depends on where the folder is served (--base-url), not on the
  build. Its integrity hashes are computed from the subjects, so it can be checked against them.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from webslm.files import canonical_json, sha256_file

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://github.com/webslm/webslm/build/mlc-webgpu/v1"
BUILDER_ID = "https://github.com/webslm/webslm/invoke-build"
PROVENANCE_FILE = "provenance.json"
APP_CONFIG_FILE = "webllm-app-config.json"
NOT_SUBJECTS = frozenset({PROVENANCE_FILE, APP_CONFIG_FILE})


def hash_files(root: Path, names: Iterable[str]) -> dict[str, str]:
    """sha256 hex of each named file under root, hashed in parallel (hashlib releases the GIL)."""
    ordered = sorted(set(names))
    workers = max(1, min(len(ordered), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(lambda name: sha256_file(root / name), ordered))
    return dict(zip(ordered, digests, strict=True))


def list_files(root: Path) -> list[str]:
    """Relative POSIX paths of every file under root, sorted."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def sri(sha256_hex: str) -> str:
    """A Subresource Integrity string (`sha256-<base64>`) for a sha256 hex digest."""
    return "sha256-" + base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")


def bare_hex(digest: str) -> str:
    """`sha256:<hex>` or `<hex>` -> `<hex>`."""
    return digest.split(":", 1)[1] if ":" in digest else digest


def subjects_of(file_digests: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"name": name, "digest": {"sha256": digest}}
            for name, digest in sorted(file_digests.items()) if name not in NOT_SUBJECTS]


def statement(
    *,
    outputs: Mapping[str, str],
    spec: Mapping[str, Any],
    model: Mapping[str, Any],
    inputs: Mapping[str, str],
    toolchain_id: str,
    image: str,
    image_digest: str,
    lock_digest: str,
    webllm_version: str,
    stages: Mapping[str, Mapping[str, str]],
) -> dict[str, Any]:
    """The provenance statement for one build (pure)."""
    dependencies = [{"name": f"model/{name}", "digest": {"sha256": digest}}
                    for name, digest in sorted(inputs.items())]
    dependencies += [
        {"name": "toolchain", "digest": {"sha256": bare_hex(toolchain_id)}},
        {"name": "toolchain-image", "uri": f"docker-image:{image}",
         "digest": {"sha256": bare_hex(image_digest)}},
        {"name": "docker/toolchain.lock.json", "digest": {"sha256": bare_hex(lock_digest)}},
    ]
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects_of(outputs),
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"model": dict(model), "spec": dict(spec)},
                "internalParameters": {"stages": {k: dict(v) for k, v in stages.items()},
                                       "webllm_version": webllm_version},
                "resolvedDependencies": dependencies,
            },
            "runDetails": {"builder": {"id": BUILDER_ID}},
        },
    }


def render(statement_value: Mapping[str, Any]) -> str:
    """Deterministic text of a statement: sorted keys, fixed separators, trailing newline."""
    return canonical_json(statement_value)
