"""The pinned toolchain image: its lock, its content-addressed ID, and how it is built.

`docker/toolchain.lock.json` is the one source of truth for every input of the image (the Debian
snapshot the base root filesystem is made from and every apt version, Rust, emsdk, MLC-LLM and
submodule commits, vendored crates, Python wheels, determinism patches). The toolchain ID is a
sha256 over the canonical lock (so key order and whitespace do not matter), the base image's recipe
(webslm.baseimage) and every file of the build context (docker/), so a changed byte anywhere is a
new image tag `webslm-toolchain:<first 12 hex>`.

A value that could not be resolved on the machine that wrote the lock is an explicit placeholder,
never a guess. `PLACEHOLDER:resolve-with-refresh-lock` needs `webslm toolchain refresh-lock` on a
networked machine (or `--allow-unpinned`); `PLACEHOLDER:resolved-on-first-use` (the vendored
crates, which upstream pins with no Cargo.lock) is resolved by the first `webslm toolchain` build,
which writes it into the lock and says so. A pin with an `evidence` note is inferred, not read:
the image build checks it and `refresh-lock` replaces it with the value read at the source.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from webslm.baseimage import BaseRecipe, base_archive_path, ensure_base_image, image_exists
from webslm.cache import default_cache_dir
from webslm.errors import BadInput, MissingEnvironment, StageFailed
from webslm.files import atomic_write_text, canonical_json, sha256_bytes, sha256_file

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = REPO_ROOT / "docker"
LOCK_NAME = "toolchain.lock.json"
SECCOMP_NAME = "seccomp-no-aslr.json"
PATCHES_DIR = "patches"
IMAGE_REPOSITORY = "webslm-toolchain"
ID_LABEL = "org.webslm.toolchain.id"
FINAL_STAGE = "toolchain"
PLACEHOLDER_PREFIX = "PLACEHOLDER:"
PLACEHOLDER = PLACEHOLDER_PREFIX + "resolve-with-refresh-lock"
FIRST_USE_PLACEHOLDER = PLACEHOLDER_PREFIX + "resolved-on-first-use"
FIRST_USE_ENTRIES = ("cargo_vendor.tree_sha256",)
CARGO_LOCKFILE = "cargo/Cargo.lock"
ID_DOMAIN = b"webslm-toolchain-id/2\n"
BUILD_CA_ENV = "WEBSLM_BUILD_CA_BUNDLE"
CRATES_INDEX = "https://index.crates.io/config.json"
REACH_TIMEOUT_S = 20
CONTEXT_SKIP = frozenset({"__pycache__", ".pytest_cache"})

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# ---------------------------------------------------------------------------------------------
# The lock: parsing and validation (pure)
# ---------------------------------------------------------------------------------------------


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
    """A git checkout at a pinned commit: `path` is where it lands under /src.

    `evidence` is set when the commit is inferred rather than read at its parent (see pins.md).
    """

    path: str
    repo: str
    commit: str
    evidence: str | None = None


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
        return tuple(f"sources.{pin.path}.commit" for pin in self.sources if pin.evidence)

    @property
    def digest(self) -> str:
        """sha256 of the canonical lock: formatting and key order do not change it."""
        return sha256_bytes(canonical_json(self.data).encode())

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
                           "restore it from git or see the README's toolchain section")
        value = value[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadInput(f"toolchain lock: `{dotted}` has the wrong type",
                       "see the README's toolchain section for the lock's format")
    return value


def _check_pin(dotted: str, value: str, pattern: re.Pattern[str], what: str) -> None:
    if not is_placeholder(value) and not pattern.match(value):
        raise BadInput(f"toolchain lock: `{dotted}` is not {what} nor a placeholder: {value!r}",
                       f"write {what} or `{PLACEHOLDER}`")


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
    _check_pin("rust.installer_sha256", _need(data, "rust.installer_sha256", str), _HEX64,
               "64 hex")
    _check_pin("emscripten.emsdk_commit", _need(data, "emscripten.emsdk_commit", str), _HEX40,
               "a 40-hex commit")
    _check_pin("cargo_vendor.tree_sha256", _need(data, "cargo_vendor.tree_sha256", str), _HEX64,
               "64 hex")
    sources = []
    for path, entry in sorted(_need(data, "sources", Mapping).items()):
        repo = entry.get("repo") if isinstance(entry, Mapping) else None
        commit = entry.get("commit") if isinstance(entry, Mapping) else None
        evidence = entry.get("evidence") if isinstance(entry, Mapping) else None
        if not isinstance(repo, str) or not isinstance(commit, str) \
                or not isinstance(evidence, str | None):
            raise BadInput(f"toolchain lock: source {path} needs a repo and a commit",
                           "pin it by repository URL and commit (evidence: a note, optional)")
        _check_pin(f"sources.{path}.commit", commit, _HEX40, "a 40-hex commit")
        sources.append(SourcePin(path=path, repo=repo, commit=commit, evidence=evidence))
    if "mlc-llm" not in {pin.path for pin in sources}:
        raise BadInput("toolchain lock: `sources.mlc-llm` is missing", "pin MLC-LLM's commit")
    for name, entry in _need(data, "python.packages", Mapping).items():
        hashes = entry.get("sha256") if isinstance(entry, Mapping) else None
        if not isinstance(entry.get("version"), str) or not isinstance(hashes, list) or not hashes:
            raise BadInput(f"toolchain lock: python package {name} needs a version and hashes",
                           "run: webslm toolchain refresh-lock")
        for index, value in enumerate(hashes):
            _check_pin(f"python.packages.{name}.sha256[{index}]", value, _HEX64, "64 hex")
    patches = _need(data, "patches", Mapping)
    for name, digest in patches.items():
        _check_pin(f"patches.{name}", digest, _HEX64, "64 hex")
    epoch = _need(data, "source_date_epoch", int)
    if epoch <= 0:
        raise BadInput("toolchain lock: source_date_epoch must be a positive integer",
                       "use the release date of the pinned MLC-LLM as a Unix time")
    placeholders = find_placeholders(data)
    for path in placeholders:
        first_use = path in FIRST_USE_ENTRIES
        if first_use != (_value_at(data, path) == FIRST_USE_PLACEHOLDER):
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
    )


def _value_at(data: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted path as find_placeholders writes it (`a.b[0]`)."""
    value: Any = data
    for key in dotted.split("."):
        name, _, index = key.partition("[")
        value = value[name]
        if index:
            value = value[int(index.rstrip("]"))]
    return value


def read_lock_json(docker_dir: Path = DOCKER_DIR) -> dict[str, Any]:
    path = docker_dir / LOCK_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise BadInput(f"no toolchain lock at {path}", "restore docker/ from git") from error
    except json.JSONDecodeError as error:
        raise BadInput(f"toolchain lock {path} is not valid JSON: {error}",
                       "fix the syntax or restore it from git") from error


def load_lock(docker_dir: Path = DOCKER_DIR) -> ToolchainLock:
    """Read, parse and validate docker/toolchain.lock.json."""
    return parse_lock(read_lock_json(docker_dir))


def patch_mismatches(lock: ToolchainLock, docker_dir: Path = DOCKER_DIR) -> tuple[str, ...]:
    """Patches whose file digest differs from the lock, or that exist on one side only."""
    folder = docker_dir / PATCHES_DIR
    on_disk = {p.name: sha256_file(p) for p in sorted(folder.glob("*.py"))} if folder.is_dir() \
        else {}
    names = sorted(set(on_disk) | set(lock.patches))
    return tuple(name for name in names if on_disk.get(name) != lock.patches.get(name))


# ---------------------------------------------------------------------------------------------
# The ID and the build context (pure over the files of docker/)
# ---------------------------------------------------------------------------------------------


def context_files(docker_dir: Path = DOCKER_DIR) -> tuple[Path, ...]:
    """Every file of the build context, sorted by relative path (caches excluded)."""
    files = [p for p in docker_dir.rglob("*")
             if p.is_file() and not CONTEXT_SKIP.intersection(p.relative_to(docker_dir).parts)]
    return tuple(sorted(files, key=lambda p: p.relative_to(docker_dir).as_posix()))


def _context_entries(docker_dir: Path) -> Iterator[tuple[str, bytes, int]]:
    """(relative name, bytes, mode) of each context file; the lock enters in canonical form."""
    for path in context_files(docker_dir):
        name = path.relative_to(docker_dir).as_posix()
        mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
        data = path.read_bytes()
        if name == LOCK_NAME:
            data = canonical_json(json.loads(data)).encode()
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


# ---------------------------------------------------------------------------------------------
# The shared contract: Toolchain, current_toolchain(), docker_client()
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Toolchain:
    """The image the pipeline's container stages run in, and what provenance records of it."""

    id: str
    image: str
    lock_digest: str
    webllm_version: str
    env: Mapping[str, str]
    seccomp_profile: Path | None


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


def docker_client() -> Any:
    """A Docker SDK client that answered a ping; MissingEnvironment when no engine answers."""
    try:
        import docker
    except ImportError as error:
        raise MissingEnvironment("the Python Docker SDK is not installed",
                                 "run: pip install docker (or bash .ci/setup)") from error
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as error:  # DockerException, requests errors, socket errors
        raise MissingEnvironment(f"no Docker engine answers ({type(error).__name__})",
                                 "start it (e.g. `dockerd &` or `bash .ci/setup`)") from error
    return client


# ---------------------------------------------------------------------------------------------
# Building, pulling and pushing the image (side effects at the edges)
# ---------------------------------------------------------------------------------------------


def registry_ref(ref: str, identifier: str) -> str:
    """REF as given when it names a tag or digest, else REF tagged with the ID's 12 hex."""
    last = ref.rsplit("/", 1)[-1]
    return ref if (":" in last or "@" in ref) else f"{ref}:{identifier[:12]}"


def build_image(client: Any, tag: str, buildargs: Mapping[str, str], *, target: str,
                docker_dir: Path = DOCKER_DIR, log: Any = sys.stderr) -> str:
    """Build one stage of docker/Dockerfile with the classic builder API; return the image ID.

    The Docker SDK talks to the engine's API, so this works with any daemon (this project's
    CI has Docker 20.10 without buildx); the log streams to `log`.
    """
    import docker.errors

    ca_bundle = os.environ.get(BUILD_CA_ENV)
    extra = {"build-ca/ca.crt": Path(ca_bundle).read_bytes()} if ca_bundle else None
    try:
        stream = client.api.build(fileobj=context_tar(docker_dir, extra), custom_context=True,
                                  tag=tag, target=target, buildargs=dict(buildargs), rm=True,
                                  forcerm=True, decode=True, labels={ID_LABEL: buildargs.get(
                                      "TOOLCHAIN_ID", "")})
        tail: list[str] = []
        for chunk in stream:
            if "stream" in chunk:
                log.write(chunk["stream"])
                tail = (tail + chunk["stream"].splitlines())[-5:]
            if "error" in chunk:
                last = " | ".join(line.strip() for line in tail if line.strip())[-400:]
                raise StageFailed(f"toolchain build failed at stage {target}: "
                                  f"{chunk['error'].strip()} ({last})",
                                  "read the build log above; fix the lock or Dockerfile")
    except docker.errors.APIError as error:
        raise StageFailed(f"the Docker engine refused the build: {error.explanation}",
                          "check `docker info` and the build arguments") from error
    return str(client.images.get(tag).id)


def stage_tag(identifier: str, stage: str, buildargs: Mapping[str, str]) -> str:
    """Tag of one intermediate stage: the toolchain ID, the stage and the arguments it got."""
    key = sha256_bytes(canonical_json({"id": identifier, "stage": stage,
                                       "args": dict(buildargs)}).encode())
    return f"{IMAGE_REPOSITORY}-stage:{stage}-{key[:12]}"


def ensure_stage(client: Any, stage: str, *, base: BaseRecipe,
                 apt_packages: Mapping[str, str] | None = None, docker_dir: Path = DOCKER_DIR,
                 log: Any = sys.stderr) -> str:
    """Build one stage over the base of `base` when its tag is absent; return the tag.

    The tag covers every build argument (the apt versions installed included) and the base
    image's ID, so a cached stage stands only for exactly these inputs.
    """
    lock = load_lock(docker_dir)
    identifier = toolchain_id(docker_dir)
    base_image = ensure_base_image(client, base, default_cache_dir())
    args = build_args(lock, identifier, base=base, apt_packages=apt_packages)
    base_id = str(client.images.get(base_image).id)
    tag = stage_tag(identifier, stage, {**args, "BASE_IMAGE_ID": base_id})
    if not image_exists(client, tag):
        build_image(client, tag, args, target=stage, docker_dir=docker_dir, log=log)
    return tag


def apt_candidates(client: Any, base: BaseRecipe, names: list[str]) -> dict[str, str]:
    """The version apt would install of each package from `base`'s archives, asked now.

    Runs docker/scripts/apt_install.sh's own sources set-up in a container of the base image, so
    the answer comes from exactly the archives a stage built over `base` installs from.
    """
    script = (DOCKER_DIR / "scripts" / "apt_install.sh").read_text(encoding="utf-8")
    env = {"DEBIAN_ARCHIVE": base.archive, "DEBIAN_SECURITY_ARCHIVE": base.security_archive,
           "DEBIAN_SUITE": base.suite, "APT_PRINT_CANDIDATES": "1"}
    output = client.containers.run(ensure_base_image(client, base, default_cache_dir()),
                                   ["bash", "-c", script, "apt_install.sh", *names],
                                   environment=env, remove=True).decode()
    return dict(line.split("=", 1) for line in output.split())


def pull_image(client: Any, ref: str, toolchain: Toolchain) -> None:
    """Pull REF, check its ID label matches, and tag it as the local toolchain tag."""
    import docker.errors

    full = registry_ref(ref, toolchain.id)
    try:
        image = client.images.pull(full)
    except docker.errors.APIError as error:
        raise MissingEnvironment(f"cannot pull {full}: {error.explanation}",
                                 "check the registry reference and your network") from error
    label = (image.labels or {}).get(ID_LABEL)
    if label != toolchain.id:
        raise BadInput(f"{full} is toolchain {label or 'unknown'}, not {toolchain.id}",
                       "pull the tag built from this lock, or build it: invoke toolchain")
    repository, tag = toolchain.image.split(":")
    image.tag(repository, tag)


def push_image(client: Any, ref: str, toolchain: Toolchain) -> str:
    """Tag the local toolchain image as REF (tagged with the ID when REF has no tag); push it."""
    full = registry_ref(ref, toolchain.id)
    repository, _, tag = full.rpartition(":")
    client.images.get(toolchain.image).tag(repository, tag)
    for chunk in client.images.push(repository, tag=tag, stream=True, decode=True):
        if "error" in chunk:
            raise StageFailed(f"push to {full} failed: {chunk['error']}",
                              "log in to the registry (docker login) and retry")
    return full


def fetched_urls(lock: ToolchainLock) -> dict[str, str]:
    """Every URL the image build fetches from, with what it is for (one per host is enough)."""
    data = lock.data
    urls = {f"{lock.base.archive}/dists/{lock.base.suite}/Release": "the Debian snapshot archive",
            f"{lock.base.security_archive}/dists/{lock.base.suite}-security/Release":
                "the Debian security snapshot",
            str(data["rust"]["installer_url"]): "rustup-init",
            str(data["emscripten"]["emsdk_repo"]): "emsdk",
            **{pin.repo: f"sources.{pin.path}" for pin in lock.sources},
            str(data["python"]["index_url"]): "the Python wheels",
            str(data["python"]["torch"]["find_links"]): "the torch wheel",
            CRATES_INDEX: "the vendored crates (crates.io)"}
    by_host: dict[str, tuple[str, str]] = {}
    for url, what in urls.items():
        by_host.setdefault(urlsplit(url).netloc, (url, what))
    return dict(by_host.values())


def unreachable(urls: Mapping[str, str]) -> list[str]:
    """`what (url: reason)` of every URL whose server does not answer (any HTTP answer counts)."""
    def probe(url: str) -> str | None:
        try:
            with _fetch(url, method="HEAD", timeout=REACH_TIMEOUT_S):
                return None
        except urllib.error.HTTPError:
            return None
        except (urllib.error.URLError, OSError) as error:
            return str(getattr(error, "reason", error))

    with ThreadPoolExecutor(max_workers=8) as pool:
        reasons = list(pool.map(probe, urls))
    return [f"{what} ({url}: {reason})" for (url, what), reason in zip(urls.items(), reasons,
                                                                       strict=True) if reason]


@dataclass(frozen=True)
class VendoredCrates:
    """What the first build pins of tokenizers-cpp's crates: its Cargo.lock and the tree digest."""

    cargo_lock: str
    tree_sha256: str


CratesResolver = Callable[[Any, ToolchainLock, Path, Any], VendoredCrates]


def vendor_crates_in_image(client: Any, lock: ToolchainLock, docker_dir: Path,
                           log: Any) -> VendoredCrates:
    """Build the Dockerfile's `crates` stage (cargo generates the Cargo.lock from crates.io and
    vendors it) and read back the Cargo.lock and the vendored tree's digest."""
    identifier = toolchain_id(docker_dir)
    args = build_args(lock, identifier)
    tag = stage_tag(identifier, "crates", args)
    if not image_exists(client, tag):
        build_image(client, tag, args, target="crates", docker_dir=docker_dir, log=log)

    def read(path: str) -> str:
        return client.containers.run(tag, ["cat", path], remove=True,
                                     network_disabled=True).decode()

    crates = VendoredCrates(cargo_lock=read("/opt/webslm/Cargo.lock"),
                            tree_sha256=read("/opt/webslm/vendor.sha256").strip())
    client.images.remove(tag, noprune=True)  # its layers stay as the build's cache
    return crates


def pin_on_first_use(client: Any, docker_dir: Path, resolve: CratesResolver,
                     log: Any) -> tuple[str, ...]:
    """Resolve the lock's first-use placeholders, write them into docker/, say what was pinned.

    Returns the files written (for the user to commit); nothing is written when there is nothing
    to resolve or when the resolver fails.
    """
    lock = load_lock(docker_dir)
    if not lock.first_use:
        return ()
    crates = resolve(client, lock, docker_dir, log)
    if not _HEX64.match(crates.tree_sha256) or "[[package]]" not in crates.cargo_lock:
        raise StageFailed(f"resolving the vendored crates gave no digest or no Cargo.lock "
                          f"({crates.tree_sha256[:80]!r})", "read the build log above")
    data = read_lock_json(docker_dir)
    data["cargo_vendor"]["tree_sha256"] = crates.tree_sha256
    parse_lock(data)
    lockfile = docker_dir / CARGO_LOCKFILE
    lockfile.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(lockfile, crates.cargo_lock)
    atomic_write_text(docker_dir / LOCK_NAME, json.dumps(data, indent=2) + "\n")
    written = (str(docker_dir / LOCK_NAME), str(lockfile))
    log.write(f"webslm: pinned on first use: cargo_vendor.tree_sha256 = {crates.tree_sha256}\n"
              f"webslm: wrote {lockfile} ({crates.cargo_lock.count('[[package]]')} crates, "
              f"resolved from crates.io now)\n"
              f"webslm: commit both so every later build uses exactly these crates:\n"
              f"  git add {' '.join(written)} && git commit -m 'toolchain: pin vendored crates'\n")
    return written


def ensure_toolchain_image(*, pull: str | None = None, push: str | None = None,
                           allow_unpinned: bool = False, docker_dir: Path = DOCKER_DIR,
                           resolve_crates: CratesResolver = vendor_crates_in_image,
                           log: Any = sys.stderr) -> Toolchain:
    """Make the image of the current lock present locally: as is, pulled, or built.

    Building: the lock checks (exit 2), then whether everything it fetches answers (exit 3,
    naming what does not), then the base root filesystem from the snapshot, the first-use pins
    (written into docker/), and the image.
    """
    lock = load_lock(docker_dir)
    stale = patch_mismatches(lock, docker_dir)
    if stale:
        raise BadInput(f"patch digests differ from the lock: {', '.join(stale)}",
                       "run: webslm toolchain refresh-lock (it records the patches' digests)")
    if lock.unresolved and not allow_unpinned:
        raise BadInput(f"the toolchain lock has {len(lock.unresolved)} unresolved "
                       f"placeholders (first: {lock.unresolved[0]})",
                       "run `webslm toolchain refresh-lock` on a networked machine, or pass "
                       "--allow-unpinned to build unpinned")
    toolchain = current_toolchain(docker_dir)
    client = docker_client()
    if not image_exists(client, toolchain.image):
        if pull:
            pull_image(client, pull, toolchain)
        else:
            missing = unreachable(fetched_urls(lock))
            if missing:
                raise MissingEnvironment("the toolchain build cannot reach "
                                         + "; ".join(missing),
                                         "build on a machine with network access to them, or "
                                         "take a prebuilt image: invoke toolchain --pull REF")
            ensure_base_image(client, lock.base, default_cache_dir())
            if pin_on_first_use(client, docker_dir, resolve_crates, log):
                lock, toolchain = load_lock(docker_dir), current_toolchain(docker_dir)
            build_image(client, toolchain.image, build_args(lock, toolchain.id),
                        target=FINAL_STAGE, docker_dir=docker_dir, log=log)
    if push:
        log.write(f"pushed {push_image(client, push, toolchain)}\n")
    return toolchain


def check_report(docker_dir: Path = DOCKER_DIR) -> str:
    """What `toolchain check` prints: ID, tag, whether the image exists, what is not yet read."""
    lock = load_lock(docker_dir)
    toolchain = current_toolchain(docker_dir)
    try:
        present = "yes" if image_exists(docker_client(), toolchain.image) else "no"
    except MissingEnvironment:
        present = "unknown (no Docker engine)"
    lines = [f"id: {toolchain.id}", f"image: {toolchain.image}", f"image present: {present}",
             f"base image: {lock.base.tag} (mmdebstrap {lock.base.variant} {lock.base.suite} "
             f"from {lock.base.archive})",
             f"base archive: {base_archive_path(lock.base, default_cache_dir())}",
             f"lock digest: {lock.digest}", f"placeholders: {len(lock.unresolved)}"]
    lines += [f"  {path}" for path in lock.unresolved]
    lines += [f"resolved on first use (by `webslm toolchain`): {len(lock.first_use)}"]
    lines += [f"  {path}" for path in lock.first_use]
    lines += [f"inferred (checked at fetch, replaced by refresh-lock): {len(lock.inferred)}"]
    lines += [f"  {path}" for path in lock.inferred]
    lines += [f"patch digest differs from lock: {name}"
              for name in patch_mismatches(lock, docker_dir)]
    return "\n".join(lines) + "\n"


def toolchain_command(action: str = "build", pull: str | None = None, push: str | None = None,
                      allow_unpinned: bool = False) -> int:
    """`webslm toolchain [build|id|check|refresh-lock]`; returns the exit code."""
    if action == "id":
        load_lock()
        sys.stdout.write(toolchain_id() + "\n")
        return 0
    if action == "check":
        sys.stdout.write(check_report())
        return 0
    if action == "refresh-lock":
        return refresh_command()
    if action == "build":
        toolchain = ensure_toolchain_image(pull=pull, push=push, allow_unpinned=allow_unpinned)
        sys.stdout.write(f"{toolchain.image}\n")
        return 0
    raise BadInput(f"unknown toolchain action {action!r}", "use build, id, check or refresh-lock")


# ---------------------------------------------------------------------------------------------
# refresh-lock: resolve placeholders on a networked machine (GitHub, registries, PyPI)
# ---------------------------------------------------------------------------------------------

Resolver = Any  # Callable[[dict], str | list[str]]: raises on failure, keeps the placeholder


def _fetch(url: str, headers: Mapping[str, str] | None = None, method: str = "GET",
           timeout: float = 60) -> Any:
    request = urllib.request.Request(url, headers=dict(headers or {}), method=method)
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (URLs from the lock)


def _git(*argv: str, cwd: Path | None = None) -> str:
    result = subprocess.run(["git", *argv], cwd=cwd, capture_output=True, text=True,
                            check=False, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr else "git")
    return result.stdout


def _shallow_fetch(repo: str, commit: str, folder: Path, *options: str) -> None:
    """Fetch one commit into a new folder; no folder is left behind when the fetch fails."""
    import shutil

    folder.mkdir(parents=True)
    try:
        _git("init", "-q", cwd=folder)
        _git("fetch", "-q", "--depth=1", *options, repo, commit, cwd=folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def resolve_download_sha256(url: str) -> str:
    digest = hashlib.sha256()
    with _fetch(url) as response:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_tag_commit(repo: str, tag: str) -> str:
    """The commit a tag names (peeled when annotated)."""
    lines = _git("ls-remote", repo, f"refs/tags/{tag}", f"refs/tags/{tag}^{{}}").splitlines()
    refs = dict(reversed(line.split("\t")) for line in lines)
    return refs.get(f"refs/tags/{tag}^{{}}") or refs[f"refs/tags/{tag}"]


def resolve_gitlink(repo: str, commit: str, path: str, scratch: Path) -> str:
    """The commit a parent repository's tree records for the submodule at `path`."""
    folder = scratch / hashlib.sha256(f"{repo}@{commit}".encode()).hexdigest()[:16]
    if not folder.exists():
        _shallow_fetch(repo, commit, folder, "--filter=blob:none")
    mode, kind, sha = _git("ls-tree", commit, path, cwd=folder).split("\t")[0].split()
    if kind != "commit":
        raise RuntimeError(f"{path} is not a submodule at {commit[:12]} ({mode} {kind})")
    return sha


def _wheel_parts(filename: str) -> tuple[str, str, str, str, str] | None:
    """(normalized name, version, python tag, abi tag, platform tag) of a wheel file name."""
    if not filename.endswith(".whl"):
        return None
    parts = filename[:-4].split("-")
    if len(parts) not in (5, 6):
        return None
    name, version, python, abi, platform = parts[0], parts[1], *parts[-3:]
    return re.sub(r"[-_.]+", "_", name).lower(), version, python, abi, platform


def wheel_fits(filename: str) -> bool:
    """A wheel that installs on CPython 3.11, x86_64 Linux (glibc)."""
    parts = _wheel_parts(filename)
    if parts is None:
        return False
    _, _, python, abi, platform = parts
    pythons = set(python.split("."))
    cpython_abi3 = abi == "abi3" and any(
        tag.startswith("cp3") and int(tag[3:]) <= 11 for tag in pythons)
    fits_python = "py3" in pythons or ("cp311" in pythons and abi == "cp311") or cpython_abi3
    fits_platform = platform == "any" or (
        "x86_64" in platform and "manylinux" in platform and "musl" not in platform)
    return fits_python and fits_platform


def resolve_pypi_hashes(index_url: str, name: str, version: str) -> list[str]:
    """sha256 of every fitting wheel of name==version, from the index's JSON simple API."""
    page = _fetch(f"{index_url.rstrip('/')}/{name}/",
                  {"Accept": "application/vnd.pypi.simple.v1+json"})
    wanted = (re.sub(r"[-_.]+", "_", name).lower(), version)
    hashes = sorted(f["hashes"]["sha256"] for f in json.load(page)["files"]
                    if (_wheel_parts(f["filename"]) or ("",) * 5)[:2] == wanted
                    and wheel_fits(f["filename"]) and not f.get("yanked"))
    if not hashes:
        raise RuntimeError(f"no CPython 3.11 x86_64 wheel of {name}=={version}")
    return hashes


def resolve_find_links_hashes(page: str, name: str, version: str) -> list[str]:
    html = _fetch(page).read().decode()
    pattern = re.escape(f"{name}-{version}".replace("+", "%2B")) + r"-cp311-cp311-[^\"#]*" \
        r"linux_x86_64\.whl#sha256=([0-9a-f]{64})"
    hashes = sorted(set(re.findall(pattern, html)))
    if not hashes:
        raise RuntimeError(f"no {name}=={version} cp311 x86_64 wheel listed at {page}")
    return hashes


def patch_digests(docker_dir: Path = DOCKER_DIR) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted((docker_dir / PATCHES_DIR).glob("*.py"))}


def _resolvers(data: dict[str, Any], scratch: Path) -> Iterator[tuple[str, Resolver]]:
    """(dotted path, zero-argument resolver) for every value refresh-lock can resolve.

    The vendored crates are not among them: the first `webslm toolchain` build pins them.
    """
    yield "rust.installer_sha256", lambda: resolve_download_sha256(data["rust"]["installer_url"])
    emsdk = data["emscripten"]
    yield "emscripten.emsdk_commit", lambda: resolve_tag_commit(emsdk["emsdk_repo"],
                                                                emsdk["version"])
    sources = data["sources"]
    for path in sorted(sources):
        parents = [p for p in sources if path.startswith(p + "/")]
        if not parents:
            continue
        parent = max(parents, key=len)

        def gitlink(parent: str = parent, path: str = path) -> str:
            entry = sources[parent]
            if is_placeholder(entry["commit"]):
                raise RuntimeError(f"its parent {parent} is not pinned yet")
            return resolve_gitlink(entry["repo"], entry["commit"], path[len(parent) + 1:],
                                   scratch)
        yield f"sources.{path}.commit", gitlink
    python = data["python"]
    for name, entry in sorted(python["packages"].items()):
        yield (f"python.packages.{name}.sha256",
               lambda n=name, e=entry: resolve_pypi_hashes(python["index_url"], n, e["version"]))
    torch = python["torch"]
    yield "python.torch.sha256", lambda: resolve_find_links_hashes(
        torch["find_links"], "torch", torch["version"])


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    # source paths contain no dots but may contain slashes: `sources.<path>.commit`
    target: Any = data
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value


def refresh_lock(docker_dir: Path = DOCKER_DIR, *, only_placeholders: bool = True,
                 log: Any = sys.stderr) -> tuple[str, ...]:
    """Resolve what this machine can reach, write the lock atomically; return what is left.

    Placeholders and inferred pins are resolved (an inferred pin that resolves loses its
    `evidence` note: it is now read at the source); with only_placeholders=False, everything.
    """
    import tempfile

    data = read_lock_json(docker_dir)
    data["patches"] = patch_digests(docker_dir)
    inferred = set(parse_lock(data).inferred)
    with tempfile.TemporaryDirectory(prefix="webslm-refresh-") as scratch:
        for dotted, resolve in _resolvers(data, Path(scratch)):
            wanted = find_placeholders(_value_at(data, dotted)) or dotted in inferred
            if only_placeholders and not wanted:
                continue
            try:
                value = resolve()
            except Exception as error:  # network, git, registry: keep the placeholder
                log.write(f"unresolved {dotted}: {type(error).__name__}: {error}\n")
                continue
            old = _value_at(data, dotted)
            _set(data, dotted, value)
            if dotted in inferred:
                del data["sources"][dotted.removeprefix("sources.").removesuffix(".commit")][
                    "evidence"]
            change = f"{old} -> {value}" if old != value else "unchanged"
            log.write(f"resolved {dotted} ({change})\n")
    lock = parse_lock(data)
    atomic_write_text(docker_dir / LOCK_NAME, json.dumps(data, indent=2) + "\n")
    return lock.unresolved


def refresh_command() -> int:
    left = refresh_lock()
    if load_lock().first_use:
        sys.stderr.write("webslm: the vendored crates are pinned by the first `webslm toolchain` "
                         "build\n")
    if left:
        sys.stderr.write(f"webslm: {len(left)} placeholders remain: {', '.join(left)}\n")
        return MissingEnvironment.exit_code
    return 0
