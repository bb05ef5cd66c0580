"""Getting what audit checks: a shipped file from a path, an http(s) URL or a pinned Hugging
Face repo file, within download limits, and the provenance.json beside or above it.
"""

from __future__ import annotations

import http.client
import os
import posixpath
import re
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from webslm.errors import BadInput, MissingEnvironment
from webslm.hubapi import CacheMiss, EntryMissing, download_file
from webslm.layout import PROVENANCE_FILE

T = TypeVar("T")
HTTP_TIMEOUT_S = 60  # per read
COPY_CHUNK = 1 << 20
DOWNLOAD_TIMEOUT_S = 3600.0  # per audit, all downloads together (audit --download-timeout)
MAX_DOWNLOAD_MIB = 16 * 1024  # per file: larger than any model file (audit --max-download-mib)


@dataclass(frozen=True)
class HubFile:
    """A file in a Hugging Face model repo: `hf://OWNER/NAME@REV/path` or a resolve URL."""

    repo_id: str
    revision: str
    path: str

    @property
    def location(self) -> str:
        return f"hf://{self.repo_id}@{self.revision}/{self.path}"


_HF_URL = re.compile(r"^https?://(?:www\.)?huggingface\.co/(?P<repo>[^/]+/[^/]+)/"
                     r"(?:resolve|blob|raw)/(?P<rev>[^/]+)/(?P<path>.+)$")
_HF_SCHEME = re.compile(r"^hf://(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?/(?P<path>.+)$")


def parse_hub_location(location: str) -> HubFile | None:
    """A HubFile for a Hub location (revision `main` when none is named), else None."""
    match = _HF_URL.match(location) or _HF_SCHEME.match(location)
    if match is None:
        return None
    revision = urllib.parse.unquote(match.group("rev") or "main")
    return HubFile(match.group("repo"), revision, urllib.parse.unquote(match.group("path")))


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://", "hf://"))


@dataclass(frozen=True)
class Fetched:
    """A fetched file on local disk, where it came from and its name inside its folder/repo."""

    path: Path
    location: str  # pinned where possible (a Hub file names the commit it was fetched at)
    relative: str  # path inside the repo, or the URL's path; basename for plain local files


class NotThere(Exception):
    """Internal: a looked-for file is absent at a location (only used while searching)."""


class NotCached(NotThere):
    """Internal: offline, and the looked-for Hub file is not in the local cache."""


@dataclass(frozen=True)
class DownloadLimits:
    """How much an audit may download: bytes per file, and a deadline for all of it."""

    max_bytes: int = MAX_DOWNLOAD_MIB << 20
    deadline: float | None = None  # time.monotonic() value; None: no overall deadline

    @classmethod
    def starting_now(cls, max_mib: int, timeout_s: float) -> DownloadLimits:
        if max_mib <= 0 or timeout_s <= 0:
            raise BadInput("--max-download-mib and --download-timeout must be positive",
                           f"e.g. --max-download-mib {MAX_DOWNLOAD_MIB} --download-timeout "
                           f"{DOWNLOAD_TIMEOUT_S:.0f}")
        return cls(max_bytes=max_mib << 20, deadline=time.monotonic() + timeout_s)

    def seconds_left(self, url: str) -> float:
        """The time the next read may take; MissingEnvironment once the deadline has passed."""
        if self.deadline is None:
            return HTTP_TIMEOUT_S
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.past_deadline(url)
        return min(left, HTTP_TIMEOUT_S)

    def past_deadline(self, url: str) -> MissingEnvironment:
        return MissingEnvironment(f"downloading {url} ran past the audit's deadline",
                                  "pass a larger --download-timeout, or download the file and "
                                  "pass its path")

    def bound(self, url: str, download: Callable[[], T]) -> T:
        """`download()`, given up at the deadline however it waits (huggingface_hub's retries,
        a server that drips bytes): it runs in a daemon thread that is abandoned then."""
        if self.deadline is None:
            return download()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = download()
            except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
                outcome["error"] = error

        worker = threading.Thread(target=run, name="webslm-download", daemon=True)
        worker.start()
        worker.join(max(0.0, self.deadline - time.monotonic()))
        if worker.is_alive():
            raise self.past_deadline(url)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]


def _hub_commit(downloaded: Path) -> str | None:
    """The commit a huggingface_hub cache path sits under (`.../snapshots/<commit>/...`)."""
    parts = downloaded.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts else None


def fetch_hub(file: HubFile, limits: DownloadLimits, *, searching: bool = False) -> Fetched:
    """hf_hub_download at the file's revision, within the limits' deadline; the result names
    the commit it resolved to.

    While searching, a file missing from an offline cache is NotCached rather than an error."""
    try:
        path = limits.bound(file.location, lambda: download_file(
            file.repo_id, file.path, file.revision, searching=searching))
    except CacheMiss as error:
        raise NotCached(file.location) from error
    except EntryMissing as error:
        raise NotThere(file.location) from error
    commit = _hub_commit(path) or file.revision
    return Fetched(path, replace(file, revision=commit).location, file.path)


def _copy_limited(response: Any, handle: Any, url: str, limits: DownloadLimits) -> None:
    """Copy a response body whole: at most limits.max_bytes, within the deadline, and exactly
    the Content-Length the server announced (a shorter body is a failed download)."""
    announced = response.headers.get("Content-Length")
    expected = int(announced) if announced and announced.isdigit() else None
    too_big = BadInput(f"{url} is larger than the download limit ({limits.max_bytes >> 20} MiB)",
                       "pass a larger --max-download-mib if the file really is that big")
    if expected is not None and expected > limits.max_bytes:
        raise too_big
    received = 0
    while True:
        chunk = response.read1(COPY_CHUNK)  # what has arrived: a drip cannot stall the check
        limits.seconds_left(url)
        if not chunk:
            break
        received += len(chunk)
        if received > limits.max_bytes:
            raise too_big
        handle.write(chunk)
    if expected is not None and received != expected:
        raise MissingEnvironment(f"the download of {url} ended after {received} of {expected} "
                                 "bytes", "try again; check the network or the server")


def fetch_http(url: str, into: Path, limits: DownloadLimits | None = None) -> Fetched:
    """Download a URL into a fresh file under `into` (written whole, within the limits)."""
    chosen = limits or DownloadLimits()
    return chosen.bound(url, lambda: _download(url, into, chosen))


def _download(url: str, into: Path, limits: DownloadLimits) -> Fetched:
    target_dir = Path(tempfile.mkdtemp(prefix="fetch-", dir=into))
    name = Path(urllib.parse.urlparse(url).path).name or "download"
    target = target_dir / name
    partial = target.with_suffix(target.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=limits.seconds_left(url)) as response:  # noqa: S310 - only is_url's schemes
            with open(partial, "wb") as handle:
                _copy_limited(response, handle, url, limits)
    except urllib.error.HTTPError as error:
        if error.code in (403, 404, 410):
            raise NotThere(url) from error
        raise MissingEnvironment(f"{url} answered HTTP {error.code}", "try again later") from error
    except (urllib.error.URLError, TimeoutError, ConnectionError,
            http.client.HTTPException) as error:
        raise MissingEnvironment(f"cannot download {url} ({getattr(error, 'reason', error)})",
                                 "check the network, or download it and pass the path") from error
    os.replace(partial, target)
    return Fetched(target, url, urllib.parse.urlparse(url).path.lstrip("/"))


def fetch(location: str, into: Path, limits: DownloadLimits | None = None) -> Fetched:
    """A local path, an http(s) URL or a Hugging Face file, as a local file."""
    hub = parse_hub_location(location)
    try:
        if hub is not None:
            return fetch_hub(hub, limits or DownloadLimits())
        if is_url(location):
            return fetch_http(location, into, limits)
    except NotThere as error:
        raise BadInput(f"{location} does not exist", "check the URL and the revision") from error
    path = Path(location)
    if not path.is_file():
        raise BadInput(f"{location} is not a file", "pass the path or URL of a shipped file")
    return Fetched(path, str(path.resolve()), path.name)


def provenance_candidates(artifact: str) -> Iterator[str]:
    """Where a shipped file's provenance.json may be: its folder, then each folder above."""
    hub = parse_hub_location(artifact)
    if hub is not None:
        parents = Path(hub.path).parents
        yield from (replace(hub, path=(p / PROVENANCE_FILE).as_posix()).location for p in parents)
    elif is_url(artifact):
        parsed = urllib.parse.urlparse(artifact)
        for parent in Path(parsed.path).parents:
            path = (parent / PROVENANCE_FILE).as_posix()
            yield urllib.parse.urlunparse(parsed._replace(path=path, query="", fragment=""))
    else:
        yield from (str(p / PROVENANCE_FILE) for p in Path(artifact).resolve().parents)


def find_provenance(artifact: Fetched, given: str | None, into: Path,
                    limits: DownloadLimits | None = None) -> Fetched:
    """The provenance named on the command line, else the nearest one above the artifact."""
    if given is not None:
        return fetch(given, into, limits)
    pinned = artifact.location if is_url(artifact.location) else str(artifact.path)
    offline = False
    for candidate in provenance_candidates(pinned):
        hub = parse_hub_location(candidate)
        try:
            if hub is not None:
                return fetch_hub(hub, limits or DownloadLimits(), searching=True)
            if is_url(candidate):
                return fetch_http(candidate, into, limits)
        except NotCached:
            offline = True
            continue
        except NotThere:
            continue
        if Path(candidate).is_file():
            return fetch(candidate, into)
    if offline:
        raise MissingEnvironment(f"offline, and no {PROVENANCE_FILE} for {artifact.location} is "
                                 "in the local Hugging Face cache", "connect to the network")
    raise BadInput(f"no {PROVENANCE_FILE} found beside or above {artifact.location}",
                   "pass --provenance PATH_OR_URL")


def relative_name(artifact: Fetched, provenance: Fetched) -> str:
    """The artifact's path relative to the provenance's folder, as far as it can be told."""
    if not is_url(artifact.location) and not is_url(provenance.location):
        try:
            return artifact.path.resolve().relative_to(provenance.path.resolve().parent) \
                .as_posix()
        except ValueError:
            return artifact.path.name
    base = posixpath.dirname(provenance.relative)
    if base and artifact.relative.startswith(base + "/"):
        return artifact.relative[len(base) + 1:]
    return artifact.relative


def artifact_subject(subjects: Mapping[str, str], artifact: Fetched, digest: str,
                     provenance: Fetched) -> str:
    """The subject an artifact is: its path relative to the provenance's folder, else the one
    subject with its file name, else the one with its digest; BadInput when it is none."""
    relative = relative_name(artifact, provenance)
    if relative in subjects:
        return relative
    by_name = [n for n in subjects if posixpath.basename(n) == posixpath.basename(relative)]
    by_digest = [n for n, d in subjects.items() if d == digest]
    for found in (by_name, by_digest):
        if len(found) == 1:
            return found[0]
    raise BadInput(f"{artifact.location} is not among the subjects of {provenance.location}",
                   f"audit one of: {', '.join(sorted(subjects)[:6])}")
