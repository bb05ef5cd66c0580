#!/usr/bin/env python3
"""Print (or check) the content digest of a folder tree: the vendored crates' pin.

sha256 over the sorted relative paths, each with its exec bit and its file's sha256, so that
timestamps, owners and the folder's location do not matter. `webslm toolchain refresh-lock`
loads this same file to compute the pin it writes into the lock.

usage: tree_digest.py FOLDER [EXPECTED]   (exit 1 when EXPECTED is given and differs)
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path


def tree_digest(folder: Path) -> str:
    entries = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            path = Path(root) / name
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink():
                entries.append(f"{relative}\0link\0{os.readlink(path)}\n")
                continue
            executable = "x" if os.access(path, os.X_OK) else "-"
            content = hashlib.sha256(path.read_bytes()).hexdigest()
            entries.append(f"{relative}\0{executable}\0{content}\n")
    return hashlib.sha256("".join(sorted(entries)).encode()).hexdigest()


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        sys.stderr.write(__doc__ or "")
        return 2
    found = tree_digest(Path(argv[1]))
    print(found)
    if len(argv) == 3 and not argv[2].startswith("PLACEHOLDER:") and argv[2] != found:
        sys.stderr.write(f"tree digest mismatch for {argv[1]}: lock {argv[2]}, found {found}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
