"""The stage cache: a stage's output folder, stored under a key that names everything it depends on.

key = sha256 of (stage name, toolchain ID, digests of the stage's input files, its arguments),
so one changed input byte, argument or toolchain misses and everything else hits. An entry is a
folder `<cache>/stages/<key>/` holding `out/` (the stage's output, files read-only) and
`entry.json` (the key material and every output file's digest). Entries are made in a scratch
folder and renamed into place, so a half-written entry is never visible; a folder under `stages/`
is complete by construction.

A hit is served only after every file of the entry hashes to the digest recorded when it was
stored: a damaged entry (a file edited, added or removed since) is discarded with a warning and
the stage runs again, so a cache hit never ships bytes other than the ones the stage produced.
Dist folders get copies (reflinks where the file system can), never links into the cache.
Scratch folders under `tmp/` carry their owner's process token; a new cache removes those whose
process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webslm.files import (
    canonical_json,
    new_scratch_folder,
    remove_dead_scratch,
    sha256_bytes,
    space_in,
)
from webslm.provenance import hash_files, list_files

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


class StageCache:
    """Stage outputs on disk, keyed by StageKey.digest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stages = root / "stages"
        self.scratch = root / "tmp"
        remove_dead_scratch(self.scratch)

    def scratch_folder(self, kind: str, root: Path | None = None) -> Path:
        """A new scratch folder of this process under the scratch area (or `root`)."""
        return new_scratch_folder(root or self.scratch, kind)

    def _read(self, key: StageKey) -> CacheEntry | None:
        folder = self.stages / key.digest
        entry_file = folder / ENTRY_FILE
        if not entry_file.is_file():
            return None
        entry = json.loads(entry_file.read_text(encoding="utf-8"))
        return CacheEntry(path=folder / OUTPUT_DIR, files=entry["files"])

    def lookup(self, key: StageKey, *, verify: bool = True) -> CacheEntry | None:
        """The entry for `key`, verified (a damaged one is discarded) unless the caller checks
        it with `intact` when it reads the files."""
        entry = self._read(key)
        if entry is None or not verify or self.intact(key, entry):
            return entry
        return None

    def intact(self, key: StageKey, entry: CacheEntry) -> bool:
        """Whether every file of the entry still has the digest recorded when it was stored; a
        damaged entry is discarded with a warning."""
        found = hash_files(entry.path, list_files(entry.path))
        if found == dict(entry.files):
            return True
        changed = sorted(n for n in set(found) | set(entry.files)
                         if found.get(n) != entry.files.get(n))
        print(f"webslm: warning: the cached {key.stage} output was changed after it was stored "
              f"({', '.join(changed[:3])}); discarded, running {key.stage} again",
              file=sys.stderr)
        self.discard(key)
        return False

    def discard(self, key: StageKey) -> None:
        """Remove an entry: renamed out of `stages/` first, so it vanishes in one step."""
        doomed = self.scratch_folder("discarded")
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.stages / key.digest, doomed / key.digest)
        shutil.rmtree(doomed, ignore_errors=True)

    def store(self, key: StageKey, output: Path, files: Mapping[str, str]) -> CacheEntry:
        """Move a finished output folder into the cache under `key`; return the entry.

        When another build stored the same key first, its entry wins (equal keys mean equal
        work) and ours is dropped.
        """
        with space_in(self.root):
            self.stages.mkdir(parents=True, exist_ok=True)
            staging = self.scratch_folder("entry")
            try:
                os.replace(output, staging / OUTPUT_DIR)
                output.mkdir()  # the caller's folder stays, empty, for the caller to remove
                make_read_only(staging / OUTPUT_DIR)
                entry = {"key": key.material(), "files": dict(sorted(files.items()))}
                (staging / ENTRY_FILE).write_text(canonical_json(entry), encoding="utf-8")
                os.chmod(staging, 0o755)
                try:
                    os.rename(staging, self.stages / key.digest)
                except OSError:
                    if self._read(key) is None:
                        raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        stored = self._read(key)
        assert stored is not None
        return stored


def make_read_only(folder: Path) -> None:
    """Cached files are read-only: an edit needs a deliberate chmod (and is then caught)."""
    for path in folder.rglob("*"):
        if path.is_file():
            os.chmod(path, 0o444)
