"""The toolchain lock, the content-addressed ID, and the Docker build arguments (pure).

`docker/toolchain.lock.json` is the one source of truth for every input of the image (the Debian
snapshot the base root filesystem is made from and every apt version, Rust, emsdk, MLC-LLM and
submodule commits, vendored crates, Python wheels, TVM patches). The toolchain ID is a
sha256 over the canonical lock (so key order and whitespace do not matter), the base image's recipe
(webslm.baseimage) and every file of the build context (docker/), so a changed byte anywhere is a
new image tag `webslm-toolchain:<first 12 hex>`.

A value that could not be resolved on the machine that wrote the lock is an explicit placeholder,
never a guess. `PLACEHOLDER:resolve-with-refresh-lock` needs `webslm toolchain refresh-lock` on a
networked machine (or `--allow-unpinned`); `PLACEHOLDER:resolved-on-first-use` (the vendored
crates, which upstream pins with no Cargo.lock) is resolved by the first `webslm toolchain` build,
which writes it into the lock and says so. Where each pin was read is recorded beside it, in an
`evidence` note starting `proven:` (read at the named source) or `inferred:` (the best evidence
there is, not a direct read): the image build checks an inferred pin and `refresh-lock` replaces
it with the value read at the source.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webslm.baseimage import BaseRecipe
from webslm.checkout import checkout_path, require
from webslm.errors import BadInput
from webslm.files import (
    canonical_json,
    parse_json,
    read_json_object,
    sha256_bytes,
    sha256_file,
)

DOCKER_DIR = checkout_path("docker")
LOCK_NAME = "toolchain.lock.json"
SECCOMP_NAME = "seccomp-no-aslr.json"
PATCHES_DIR = "patches"
IMAGE_REPOSITORY = "webslm-toolchain"
PLACEHOLDER_PREFIX = "PLACEHOLDER:"
PROVEN, INFERRED = "proven:", "inferred:"
EVIDENCE_KINDS = (PROVEN, INFERRED)
PLACEHOLDER = PLACEHOLDER_PREFIX + "resolve-with-refresh-lock"
FIRST_USE_PLACEHOLDER = PLACEHOLDER_PREFIX + "resolved-on-first-use"
FIRST_USE_ENTRIES = ("cargo_vendor.tree_sha256",)
CARGO_LOCKFILE = "cargo/Cargo.lock"
ID_DOMAIN = b"webslm-toolchain-id/2\n"
CONTEXT_SKIP = frozenset({"__pycache__", ".pytest_cache"})

HEX40 = re.compile(r"^[0-9a-f]{40}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def lock_digest(data: Mapping[str, Any]) -> str:
    """sha256 of the canonical lock: formatting and key order do not change it (provenance
    records it; verify looks for it in the lock's git history)."""
    return sha256_bytes(canonical_json(data).encode())


def is_placeholder(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PLACEHOLDER_PREFIX)


def find_placeholders(value: object, path: str = "") -> tuple[str, ...]:
    """Dotted paths of every placeholder left in a JSON value, in key order."""
    if is_placeholder(value):
        return (path,)
    found: list[str] = []
    if isinstance(value, Mapping):
        for key in sorted(value):
            found += find_placeholders(value[key], f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += find_placeholders(item, f"{path}[{index}]")
    return tuple(found)


@dataclass(frozen=True)
class SourcePin:
    """A git checkout at a pinned commit: `path` is where it lands under /src (where the commit
    was read is in ToolchainLock.evidence)."""

    path: str
    repo: str
    commit: str


@dataclass(frozen=True)
class ToolchainLock:
    """The validated lock. `data` is the parsed JSON; the fields are the parts code reads."""

    data: Mapping[str, Any]
    source_date_epoch: int
    webllm_version: str
    base: BaseRecipe
    apt_packages: Mapping[str, str]
    runtime_packages: Mapping[str, str]
    llvm_major: int
    rust_toolchain: str
    emscripten_version: str
    sources: tuple[SourcePin, ...]
    patches: Mapping[str, str]
    placeholders: tuple[str, ...]
    evidence: Mapping[str, str]  # dotted pin -> its `proven:` or `inferred:` note

    @property
    def first_use(self) -> tuple[str, ...]:
        """Placeholders the first `webslm toolchain` build resolves (network needed)."""
        return tuple(p for p in self.placeholders if p in FIRST_USE_ENTRIES)

    @property
    def unresolved(self) -> tuple[str, ...]:
        """Placeholders only `refresh-lock` (or `--allow-unpinned`) gets past."""
        return tuple(p for p in self.placeholders if p not in FIRST_USE_ENTRIES)

    @property
    def inferred(self) -> tuple[str, ...]:
        """Pins that were not read at their source: the image build checks them."""
        return tuple(pin for pin, note in self.evidence.items() if note.startswith(INFERRED))

    @property
    def digest(self) -> str:
        return lock_digest(self.data)

    def source(self, path: str) -> SourcePin:
        for pin in self.sources:
            if pin.path == path:
                return pin
        raise KeyError(path)


def _need(data: Mapping[str, Any], dotted: str, kind: type | tuple[type, ...]) -> Any:
    value: Any = data
    for key in dotted.split("."):
        if not isinstance(value, Mapping) or key not in value:
            raise BadInput(f"toolchain lock: missing `{dotted}`",
                           "restore it from git or see docs/toolchain.md")
        value = value[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadInput(f"toolchain lock: `{dotted}` has the wrong type",
                       "see docs/toolchain.md for the lock's format")
    return value


def _check_pin(dotted: str, value: object, pattern: re.Pattern[str], what: str) -> None:
    if not isinstance(value, str) or not is_placeholder(value) and not pattern.match(value):
        raise BadInput(f"toolchain lock: `{dotted}` is not {what} nor a placeholder: {value!r}",
                       f"write {what} or `{PLACEHOLDER}`")


def _evidence(dotted: str, entry: Mapping[str, Any]) -> dict[str, str]:
    """{pin: note} for an entry whose `evidence` says where its pin was read; BadInput if the
    note does not say whether the pin is proven or inferred."""
    note = entry.get("evidence")
    if note is None:
        return {}
    if not isinstance(note, str) or not note.startswith(EVIDENCE_KINDS):
        raise BadInput(f"toolchain lock: the evidence of `{dotted}` must start with "
                       f"{' or '.join(EVIDENCE_KINDS)}: {note!r}",
                       "say where the pin was read, or what it was inferred from")
    return {dotted: note}


def parse_lock(data: Mapping[str, Any]) -> ToolchainLock:
    """Validate the lock's shape and every pin's form; BadInput names the first bad entry."""
    if _need(data, "schema", int) != 1:
        raise BadInput("toolchain lock: unknown schema", "this webslm reads schema 1")
    if "base_image" in data:
        raise BadInput("toolchain lock: `base_image` is gone (the base is made with mmdebstrap "
                       "from `debian`)", "remove it and set `debian.base_variant`")
    for dotted in ("debian.suite", "debian.archive", "debian.security_archive",
                   "debian.base_variant"):
        _need(data, dotted, str)
    apt = _need(data, "debian.packages", Mapping)
    runtime = _need(data, "debian.runtime_packages", Mapping)
    for name, version in [*apt.items(), *runtime.items()]:
        if not isinstance(version, str) or not version or is_placeholder(version):
            raise BadInput(f"toolchain lock: apt package {name} has no exact version",
                           "pin it to the version in the Debian snapshot")
    llvm_major = _need(data, "llvm.major", int)
    if llvm_major < 15 or f"libpolly-{llvm_major}-dev" not in apt:
        raise BadInput(f"toolchain lock: LLVM {llvm_major} needs LLVM >= 15 and "
                       f"libpolly-{llvm_major}-dev pinned", "pin llvm-N-dev with libpolly-N-dev")
    _check_pin("rust.installer_sha256", _need(data, "rust.installer_sha256", str), HEX64,
               "64 hex")
    _check_pin("emscripten.emsdk_commit", _need(data, "emscripten.emsdk_commit", str), HEX40,
               "a 40-hex commit")
    _check_pin("cargo_vendor.tree_sha256", _need(data, "cargo_vendor.tree_sha256", str), HEX64,
               "64 hex")
    evidence = {**_evidence("rust.installer_sha256", _need(data, "rust", Mapping)),
                **_evidence("emscripten.emsdk_commit", _need(data, "emscripten", Mapping)),
                **_evidence("python.torch.sha256", _need(data, "python.torch", Mapping))}
    sources = []
    for path, entry in sorted(_need(data, "sources", Mapping).items()):
        repo = entry.get("repo") if isinstance(entry, Mapping) else None
        commit = entry.get("commit") if isinstance(entry, Mapping) else None
        if not isinstance(repo, str) or not isinstance(commit, str):
            raise BadInput(f"toolchain lock: source {path} needs a repo and a commit",
                           "pin it by repository URL and commit (evidence: a note, optional)")
        _check_pin(f"sources.{path}.commit", commit, HEX40, "a 40-hex commit")
        evidence.update(_evidence(f"sources.{path}.commit", entry))
        sources.append(SourcePin(path=path, repo=repo, commit=commit))
    if "mlc-llm" not in {pin.path for pin in sources}:
        raise BadInput("toolchain lock: `sources.mlc-llm` is missing", "pin MLC-LLM's commit")
    for name, entry in _need(data, "python.packages", Mapping).items():
        entry = entry if isinstance(entry, Mapping) else {}
        hashes = entry.get("sha256")
        if not isinstance(entry.get("version"), str) or not isinstance(hashes, list) or not hashes:
            raise BadInput(f"toolchain lock: python package {name} needs a version and hashes",
                           "run: webslm toolchain refresh-lock")
        for index, value in enumerate(hashes):
            _check_pin(f"python.packages.{name}.sha256[{index}]", value, HEX64, "64 hex")
    patches = _need(data, "patches", Mapping)
    for name, digest in patches.items():
        _check_pin(f"patches.{name}", digest, HEX64, "64 hex")
    epoch = _need(data, "source_date_epoch", int)
    if epoch <= 0:
        raise BadInput("toolchain lock: source_date_epoch must be a positive integer",
                       "use the release date of the pinned MLC-LLM as a Unix time")
    placeholders = find_placeholders(data)
    for path in placeholders:
        first_use = path in FIRST_USE_ENTRIES
        if first_use != (value_at(data, path) == FIRST_USE_PLACEHOLDER):
            raise BadInput(f"toolchain lock: `{path}` has the wrong kind of placeholder",
                           f"write `{FIRST_USE_PLACEHOLDER if first_use else PLACEHOLDER}`")
    return ToolchainLock(
        data=data,
        source_date_epoch=epoch,
        webllm_version=_need(data, "webllm.version", str),
        base=BaseRecipe.from_lock(data),
        apt_packages=dict(apt),
        runtime_packages=dict(runtime),
        llvm_major=llvm_major,
        rust_toolchain=_need(data, "rust.toolchain", str),
        emscripten_version=_need(data, "emscripten.version", str),
        sources=tuple(sources),
        patches=dict(patches),
        placeholders=placeholders,
        evidence=evidence,
    )


def value_at(data: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted path as find_placeholders writes it (`a.b[0]`)."""
    value: Any = data
    for key in dotted.split("."):
        name, _, index = key.partition("[")
        value = value[name]
        if index:
            value = value[int(index.rstrip("]"))]
    return value


def read_lock_json(docker_dir: Path = DOCKER_DIR) -> dict[str, Any]:
    return read_json_object(require(docker_dir) / LOCK_NAME, "restore docker/ from git")


def load_lock(docker_dir: Path = DOCKER_DIR) -> ToolchainLock:
    """Read, parse and validate docker/toolchain.lock.json."""
    return parse_lock(read_lock_json(docker_dir))


def patch_digests(docker_dir: Path = DOCKER_DIR) -> dict[str, str]:
    """sha256 of each TVM patch in docker/patches, by file name."""
    return {p.name: sha256_file(p) for p in sorted((docker_dir / PATCHES_DIR).glob("*.py"))}


def patch_mismatches(lock: ToolchainLock, docker_dir: Path = DOCKER_DIR) -> tuple[str, ...]:
    """Patches whose file digest differs from the lock, or that exist on one side only."""
    on_disk = patch_digests(docker_dir)
    names = sorted(set(on_disk) | set(lock.patches))
    return tuple(name for name in names if on_disk.get(name) != lock.patches.get(name))


# ---------------------------------------------------------------------------------------------
# The ID and the build context (pure over the files of docker/)
# ---------------------------------------------------------------------------------------------


def context_files(docker_dir: Path = DOCKER_DIR) -> tuple[Path, ...]:
    """Every file of the build context, sorted by relative path (caches excluded)."""
    files = [p for p in require(docker_dir).rglob("*")
             if p.is_file() and not CONTEXT_SKIP.intersection(p.relative_to(docker_dir).parts)]
    return tuple(sorted(files, key=lambda p: p.relative_to(docker_dir).as_posix()))


def _context_entries(docker_dir: Path) -> Iterator[tuple[str, bytes, int]]:
    """(relative name, bytes, mode) of each context file; the lock enters in canonical form."""
    for path in context_files(docker_dir):
        name = path.relative_to(docker_dir).as_posix()
        mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
        data = path.read_bytes()
        if name == LOCK_NAME:
            data = canonical_json(parse_json(data, str(path), "restore docker/ from git")).encode()
        yield name, data, mode


def toolchain_id(docker_dir: Path = DOCKER_DIR) -> str:
    """sha256 over the base image's recipe, the canonical lock and every file of the context."""
    digest = hashlib.sha256(ID_DOMAIN)
    digest.update(f"base\0{load_lock(docker_dir).base.key}\0".encode())
    for name, data, mode in _context_entries(docker_dir):
        digest.update(f"{name}\0{mode:o}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def image_tag(identifier: str) -> str:
    return f"{IMAGE_REPOSITORY}:{identifier[:12]}"


def context_tar(docker_dir: Path = DOCKER_DIR,
                extra: Mapping[str, bytes] | None = None) -> io.BytesIO:
    """The build context as a tar with fixed metadata: the same files give the same bytes.

    `extra` adds files that are not inputs of the image (the build-time CA bundle).
    """
    buffer = io.BytesIO()
    entries = [*_context_entries(docker_dir),
               *((name, data, 0o644) for name, data in sorted((extra or {}).items()))]
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


# ---------------------------------------------------------------------------------------------
# What the image and the stages get from the lock (pure)
# ---------------------------------------------------------------------------------------------


def determinism_env(lock: ToolchainLock) -> dict[str, str]:
    """Settings every stage container runs with (also baked into the image)."""
    return {"SOURCE_DATE_EPOCH": str(lock.source_date_epoch), "TZ": "UTC",
            "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0"}


def build_args(lock: ToolchainLock, identifier: str, *, base: BaseRecipe | None = None,
               apt_packages: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Docker build arguments, every one read from the lock.

    The overrides exist for machines that cannot reach the snapshot archive (this project's tests
    build the Debian-only stages from a base made from the live mirror, with the versions that
    mirror serves today); the product always builds with the lock's recipe and versions.
    """
    def pinned(packages: Mapping[str, str]) -> str:
        return " ".join(f"{name}={version}" for name, version in sorted(packages.items()))

    recipe = base or lock.base
    return {
        "BASE_IMAGE": recipe.tag,
        "DEBIAN_ARCHIVE": recipe.archive,
        "DEBIAN_SECURITY_ARCHIVE": recipe.security_archive,
        "DEBIAN_SUITE": recipe.suite,
        "APT_PACKAGES": pinned(apt_packages if apt_packages is not None else lock.apt_packages),
        "RUNTIME_PACKAGES": pinned(lock.runtime_packages),
        "LLVM_MAJOR": str(lock.llvm_major),
        "SOURCE_DATE_EPOCH": str(lock.source_date_epoch),
        "RUST_TOOLCHAIN": lock.rust_toolchain,
        "RUSTUP_INIT_URL": str(lock.data["rust"]["installer_url"]),
        "RUSTUP_INIT_SHA256": str(lock.data["rust"]["installer_sha256"]),
        "EMSCRIPTEN_VERSION": lock.emscripten_version,
        "EMSDK_REPO": str(lock.data["emscripten"]["emsdk_repo"]),
        "EMSDK_COMMIT": str(lock.data["emscripten"]["emsdk_commit"]),
        "TOOLCHAIN_ID": identifier,
    }
