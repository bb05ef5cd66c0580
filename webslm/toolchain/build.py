"""Building, pulling and pushing the toolchain image, and the `webslm toolchain` command.

Side effects at the edges: the Docker engine, the network check before a build, the first-use
pins written into docker/.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.error
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker.errors

from webslm.baseimage import BaseRecipe, base_archive_path, ensure_base_image
from webslm.cache import default_cache_dir
from webslm.errors import BadInput, MissingEnvironment, StageFailed
from webslm.files import atomic_write_text, canonical_json, sha256_bytes
from webslm.toolchain import Toolchain, current_toolchain, docker_client, image_exists
from webslm.toolchain.lock import (
    CARGO_LOCKFILE,
    DOCKER_DIR,
    HEX64,
    IMAGE_REPOSITORY,
    LOCK_NAME,
    ToolchainLock,
    build_args,
    context_tar,
    load_lock,
    parse_lock,
    patch_mismatches,
    read_lock_json,
    toolchain_id,
)
from webslm.toolchain.refresh import open_url, refresh_command

ID_LABEL = "org.webslm.toolchain.id"
FINAL_STAGE = "toolchain"
BUILD_CA_ENV = "WEBSLM_BUILD_CA_BUNDLE"
CRATES_INDEX = "https://index.crates.io/config.json"
REACH_TIMEOUT_S = 20


# distribution/reference's grammar (what `docker pull` accepts):
# [domain[:port]/]path[:tag][@digest], where a first part is a domain only with a "." or a port,
# or as localhost.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"(?:(?:localhost|{_LABEL}(?:\.{_LABEL})+)(?::[0-9]+)?/|{_LABEL}:[0-9]+/)?"
IMAGE_REFERENCE = re.compile(
    rf"{_DOMAIN}{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?")


def check_reference(flag: str, ref: str) -> str:
    """REF when it is an image reference Docker accepts, else BadInput (before any engine)."""
    if not IMAGE_REFERENCE.fullmatch(ref) or len(ref) > 255:
        raise BadInput(f"{flag} {ref!r} is not an image reference",
                       f"pass e.g. {flag} ghcr.io/OWNER/webslm-toolchain[:TAG] (lower-case path)")
    return ref


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
    fix = "check that the registry is reachable and that you are logged in (docker login)"
    try:
        for chunk in client.images.push(repository, tag=tag, stream=True, decode=True):
            if "error" in chunk:  # the registry cannot be reached, or refused us
                raise MissingEnvironment(f"push to {full} failed: {chunk['error']}", fix)
    except docker.errors.APIError as error:
        raise MissingEnvironment(f"push to {full} failed: {error.explanation}", fix) from error
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
            with open_url(url, method="HEAD", timeout=REACH_TIMEOUT_S):
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
    tag = ensure_stage(client, "crates", base=lock.base, docker_dir=docker_dir, log=log)

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
    if not HEX64.match(crates.tree_sha256) or "[[package]]" not in crates.cargo_lock:
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
    for flag, ref in (("--pull", pull), ("--push", push)):
        if ref is not None:
            check_reference(flag, ref)
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
        sys.stdout.write(toolchain_id() + "\n")  # it validates the lock first
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
