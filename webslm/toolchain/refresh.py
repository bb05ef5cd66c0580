"""`refresh-lock`: resolve placeholders and inferred pins on a networked machine (GitHub,
static.rust-lang.org, PyPI, the PyTorch index) and write the lock."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from webslm.errors import MissingEnvironment
from webslm.files import atomic_write_text
from webslm.toolchain.lock import (
    DOCKER_DIR,
    LOCK_NAME,
    PROVEN,
    find_placeholders,
    is_placeholder,
    load_lock,
    parse_lock,
    patch_digests,
    read_lock_json,
    value_at,
)

Resolver = Any  # Callable[[dict], str | list[str]]: raises on failure, keeps the placeholder


def open_url(url: str, headers: Mapping[str, str] | None = None, method: str = "GET",
             timeout: float = 60) -> Any:
    """GET or HEAD a URL the resolvers built from the lock's pins (never a user's input)."""
    request = urllib.request.Request(url, headers=dict(headers or {}), method=method)  # noqa: S310
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310


def _git(*argv: str, cwd: Path | None = None) -> str:
    result = subprocess.run(["git", *argv], cwd=cwd, capture_output=True, text=True,
                            check=False, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr else "git")
    return result.stdout


def _shallow_fetch(repo: str, commit: str, folder: Path, *options: str) -> None:
    """Fetch one commit into a new folder; no folder is left behind when the fetch fails."""
    folder.mkdir(parents=True)
    try:
        _git("init", "-q", cwd=folder)
        _git("fetch", "-q", "--depth=1", *options, repo, commit, cwd=folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def resolve_download_sha256(url: str) -> str:
    digest = hashlib.sha256()
    with open_url(url) as response:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_tag_commit(repo: str, tag: str) -> str:
    """The commit a tag names (peeled when annotated)."""
    lines = _git("ls-remote", repo, f"refs/tags/{tag}", f"refs/tags/{tag}^{{}}").splitlines()
    refs = {ref: commit for commit, ref in (line.split("\t") for line in lines)}
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
    page = open_url(f"{index_url.rstrip('/')}/{name}/",
                    {"Accept": "application/vnd.pypi.simple.v1+json"})
    wanted = (re.sub(r"[-_.]+", "_", name).lower(), version)
    hashes = sorted(f["hashes"]["sha256"] for f in json.load(page)["files"]
                    if (_wheel_parts(f["filename"]) or ("",) * 5)[:2] == wanted
                    and wheel_fits(f["filename"]) and not f.get("yanked"))
    if not hashes:
        raise RuntimeError(f"no CPython 3.11 x86_64 wheel of {name}=={version}")
    return hashes


def resolve_find_links_hashes(page: str, name: str, version: str) -> list[str]:
    html = open_url(page).read().decode()
    pattern = re.escape(f"{name}-{version}".replace("+", "%2B")) + r"-cp311-cp311-[^\"#]*" \
        r"linux_x86_64\.whl#sha256=([0-9a-f]{64})"
    hashes = sorted(set(re.findall(pattern, html)))
    if not hashes:
        raise RuntimeError(f"no {name}=={version} cp311 x86_64 wheel listed at {page}")
    return hashes


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
    """Resolve what this machine can reach, write the lock atomically; return what is left:
    the placeholders, and every pin whose resolution failed (offline, say).

    Placeholders and inferred pins are resolved (an inferred pin that resolves is now proven: its
    `evidence` says it was read at the source); with only_placeholders=False, everything.
    """
    failed: list[str] = []
    data = read_lock_json(docker_dir)
    data["patches"] = patch_digests(docker_dir)
    inferred = set(parse_lock(data).inferred)
    with tempfile.TemporaryDirectory(prefix="webslm-refresh-") as scratch:
        for dotted, resolve in _resolvers(data, Path(scratch)):
            wanted = find_placeholders(value_at(data, dotted)) or dotted in inferred
            if only_placeholders and not wanted:
                continue
            try:
                value = resolve()
            except Exception as error:  # noqa: BLE001 (network, git, registry: keep the placeholder)
                log.write(f"unresolved {dotted}: {type(error).__name__}: {error}\n")
                failed.append(dotted)
                continue
            old = value_at(data, dotted)
            _set(data, dotted, value)
            if dotted in inferred:
                entry = value_at(data, dotted.rpartition(".")[0])  # the pin's own object
                entry["evidence"] = f"{PROVEN} read at the source by refresh-lock"
            change = f"{old} -> {value}" if old != value else "unchanged"
            log.write(f"resolved {dotted} ({change})\n")
    lock = parse_lock(data)
    atomic_write_text(docker_dir / LOCK_NAME, json.dumps(data, indent=2) + "\n")
    return tuple(dict.fromkeys([*lock.unresolved, *failed]))


def refresh_command(docker_dir: Path = DOCKER_DIR) -> int:
    """`toolchain refresh-lock`: exit 3 (missing environment) while any pin is left unresolved,
    whether a placeholder or a pin this machine could not reach."""
    left = refresh_lock(docker_dir)
    if load_lock(docker_dir).first_use:
        sys.stderr.write("webslm: the vendored crates are pinned by the first `webslm toolchain` "
                         "build\n")
    if left:
        sys.stderr.write(f"webslm: {len(left)} pins are not resolved: {', '.join(left)}; run "
                         "refresh-lock again where their sources can be reached\n")
        return MissingEnvironment.exit_code
    return 0
