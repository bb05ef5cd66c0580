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
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webslm.errors import BadInput
from webslm.files import canonical_json, read_json, sha256_file
from webslm.layout import APP_CONFIG_FILE, PROVENANCE_FILE
from webslm.spec import BuildSpec

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://github.com/webslm/webslm/build/mlc-webgpu/v1"
BUILDER_ID = "https://github.com/webslm/webslm/invoke-build"
TOOLCHAIN_DEPENDENCY = "toolchain"
IMAGE_DEPENDENCY = "toolchain-image"
LOCK_DEPENDENCY = "docker/toolchain.lock.json"
MODEL_DEPENDENCY_PREFIX = "model/"
HEX64 = re.compile(r"^[0-9a-f]{64}$")
NOT_A_STATEMENT_FIX = "point at the provenance.json a webslm build wrote"
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
    dependencies = [{"name": f"{MODEL_DEPENDENCY_PREFIX}{name}", "digest": {"sha256": digest}}
                    for name, digest in sorted(inputs.items())]
    dependencies += [
        {"name": TOOLCHAIN_DEPENDENCY, "digest": {"sha256": bare_hex(toolchain_id)}},
        {"name": IMAGE_DEPENDENCY, "uri": f"docker-image:{image}",
         "digest": {"sha256": bare_hex(image_digest)}},
        {"name": LOCK_DEPENDENCY, "digest": {"sha256": bare_hex(lock_digest)}},
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


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Provenance:
    """A provenance statement as verify, audit and publish read it, checked on the way in."""

    subjects: Mapping[str, str]  # file name -> sha256 hex
    spec: BuildSpec  # checked as the CLI checks its flags (spec.validate_spec)
    model: Mapping[str, Any]  # {"id", "revision", "source": "hub" | "local"}
    inputs: Mapping[str, str]  # model file name -> sha256 hex
    toolchain_id: str
    lock_digest: str
    image_digest: str | None
    stages: Mapping[str, Mapping[str, str]]  # stage -> {"cache_key", "output"}
    webllm_version: str


def parse_provenance(statement: Any, where: str, fix: str = NOT_A_STATEMENT_FIX) -> Provenance:
    """A Provenance from a decoded provenance.json; BadInput saying what is missing."""

    def bad(why: str) -> BadInput:
        return BadInput(f"{where} is not a webslm provenance statement ({why})", fix)

    if not isinstance(statement, dict):
        raise bad("not a JSON object")
    if statement.get("_type") != STATEMENT_TYPE or statement.get("predicateType") != PREDICATE_TYPE:
        raise bad(f"want _type {STATEMENT_TYPE} and predicateType {PREDICATE_TYPE}")
    try:
        subjects = {str(s["name"]): str(s["digest"]["sha256"]) for s in statement["subject"]}
        definition = statement["predicate"]["buildDefinition"]
        external = definition["externalParameters"]
        recorded_spec, model = dict(external["spec"]), dict(external["model"])
        dependencies = {str(d["name"]): d for d in definition["resolvedDependencies"]}
        internal = definition.get("internalParameters", {})
        stages = internal.get("stages", {})
        webllm_version = str(internal.get("webllm_version", ""))
        toolchain_id = str(dependencies[TOOLCHAIN_DEPENDENCY]["digest"]["sha256"])
        lock_digest = str(dependencies[LOCK_DEPENDENCY]["digest"]["sha256"])
        image = dependencies.get(IMAGE_DEPENDENCY, {}).get("digest", {}).get("sha256")
        inputs = {name.removeprefix(MODEL_DEPENDENCY_PREFIX): str(d["digest"]["sha256"])
                  for name, d in dependencies.items()
                  if name.startswith(MODEL_DEPENDENCY_PREFIX)}
        stage_records = {str(k): dict(v) for k, v in dict(stages).items()}
    except KeyError as error:
        raise bad(f"no {error}") from error
    except (TypeError, ValueError, AttributeError) as error:  # a list where an object belongs
        raise bad("a field has the wrong type") from error
    bad_digests = [n for n, d in {**subjects, **inputs}.items() if not HEX64.match(d)]
    if not subjects or bad_digests:
        raise bad("no subjects" if not subjects else f"bad sha256 for {bad_digests[0]}")
    try:
        spec = BuildSpec.from_json(recorded_spec)
    except BadInput as error:
        raise bad(f"its spec: {error.what}") from error
    return Provenance(subjects=subjects, spec=spec, model=model, inputs=inputs,
                      toolchain_id=toolchain_id, lock_digest=lock_digest,
                      image_digest=str(image) if image else None, stages=stage_records,
                      webllm_version=webllm_version)


def load_provenance(path: Path, fix: str = NOT_A_STATEMENT_FIX) -> Provenance:
    """The Provenance in a provenance.json file; BadInput (with `fix`) when it is not one."""
    return parse_provenance(read_json(path, fix), str(path), fix)
