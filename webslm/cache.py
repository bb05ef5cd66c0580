"""The stage cache: a stage's output folder, stored under a key that names everything it depends on.

key = sha256 of (stage name, toolchain ID, digests of the stage's input files, its arguments),
so one changed input byte, argument or toolchain misses and everything else hits. An entry is a
folder `<cache>/stages/<key>/` holding `out/` (the stage's output, files read-only) and
`entry.json` (the key material and every output file's digest). Entries are made in a scratch
folder and renamed into place, so a half-written entry is never visible; a folder under `stages/`
is complete by construction.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webslm.files import canonical_json, sha256_bytes

ENTRY_FILE = "entry.json"
OUTPUT_DIR = "out"


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/webslm, or ~/.cache/webslm."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "webslm"


@dataclass(frozen=True)
class StageKey:
    """What a stage's output depends on; `digest` is the cache key."""

    stage: str
    toolchain_id: str
    inputs: Mapping[str, str]  # input name (e.g. "model/config.json") -> sha256 hex
    arguments: tuple[str, ...]

    def material(self) -> dict[str, Any]:
        return {"stage": self.stage, "toolchain_id": self.toolchain_id,
                "inputs": dict(sorted(self.inputs.items())), "arguments": list(self.arguments)}

    @property
    def digest(self) -> str:
        return sha256_bytes(canonical_json(self.material()).encode())


def tree_digest(file_digests: Mapping[str, str]) -> str:
    """One digest for a folder: sha256 over its sorted (relative path, sha256) pairs."""
    return sha256_bytes(canonical_json(dict(sorted(file_digests.items()))).encode())


@dataclass(frozen=True)
class CacheEntry:
    """A stored stage output: its folder and the digest of every file in it."""

    path: Path
    files: Mapping[str, str]

    @property
    def digest(self) -> str:
        return tree_digest(self.files)


class StageCache:
    """Stage outputs on disk, keyed by StageKey.digest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stages = root / "stages"
        self.scratch = root / "tmp"

    def lookup(self, key: StageKey) -> CacheEntry | None:
        folder = self.stages / key.digest
        entry_file = folder / ENTRY_FILE
        if not entry_file.is_file():
            return None
        entry = json.loads(entry_file.read_text(encoding="utf-8"))
        return CacheEntry(path=folder / OUTPUT_DIR, files=entry["files"])

    @contextlib.contextmanager
    def new_output(self) -> Iterator[Path]:
        """A fresh, empty scratch folder (on the cache's file system) for a stage to fill."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="stage-", dir=self.scratch))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def store(self, key: StageKey, output: Path, files: Mapping[str, str]) -> CacheEntry:
        """Move a finished output folder into the cache under `key`; return the entry.

        When another build stored the same key first, its entry wins (equal keys mean equal
        work) and ours is dropped.
        """
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.stages.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="entry-", dir=self.scratch))
        try:
            os.replace(output, staging / OUTPUT_DIR)
            output.mkdir()  # the caller's context manager removes it again
            make_read_only(staging / OUTPUT_DIR)
            entry = {"key": key.material(), "files": dict(sorted(files.items()))}
            (staging / ENTRY_FILE).write_text(canonical_json(entry), encoding="utf-8")
            os.chmod(staging, 0o755)
            try:
                os.rename(staging, self.stages / key.digest)
            except OSError:
                if self.lookup(key) is None:
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        stored = self.lookup(key)
        assert stored is not None
        return stored


def make_read_only(folder: Path) -> None:
    """Cached files are shared (hard-linked into dist folders): nobody may write through them."""
    for path in folder.rglob("*"):
        if path.is_file():
            os.chmod(path, 0o444)
