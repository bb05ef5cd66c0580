#!/usr/bin/env python3
"""Fetch MLC-LLM and its submodules at the lock's commits into DEST, checking every commit.

The root source is fetched by commit. Each submodule is fetched at the commit its parent's tree
records (the gitlink), which must equal the lock's pin (an inferred pin, whose `evidence` note
starts `inferred:`, is checked the same way: a wrong one stops here, naming the entry and the
commit found); a
placeholder pin accepts the gitlink and prints it (only with --allow-unpinned builds). `.git`
folders are removed afterwards so no clone metadata (times, remotes) reaches the image.

usage: fetch_sources.py LOCK DEST
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


def git(*argv: str, cwd: Path) -> str:
    return subprocess.run(["git", *argv], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def fetch(repo: str, commit: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    git("init", "-q", cwd=folder)
    git("fetch", "-q", "--depth=1", repo, commit, cwd=folder)
    git("checkout", "-q", "--detach", "FETCH_HEAD", cwd=folder)
    found = git("rev-parse", "HEAD", cwd=folder)
    if found != commit:
        raise SystemExit(f"fetch_sources: {repo} gave {found}, expected {commit}")


def gitlink(parent: Path, relative: str) -> str:
    line = git("ls-tree", "HEAD", relative, cwd=parent)
    fields = line.split()
    if len(fields) < 3 or fields[1] != "commit":
        raise SystemExit(f"fetch_sources: {relative} is not a submodule of {parent}")
    return fields[2]


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write(__doc__ or "")
        return 2
    sources = json.loads(Path(argv[1]).read_text())["sources"]
    dest = Path(argv[2])
    for path in sorted(sources, key=lambda p: (p.count("/"), p)):
        pin = sources[path]
        parents = [p for p in sources if path.startswith(p + "/")]
        commit = pin["commit"]
        if parents:
            parent = max(parents, key=len)
            recorded = gitlink(dest / parent, path[len(parent) + 1:])
            if commit.startswith("PLACEHOLDER:"):
                print(f"UNPINNED {path}: using the parent's gitlink {recorded}")
                commit = recorded
            elif commit != recorded:
                kind = "inferred pin" if pin.get("evidence", "").startswith("inferred:") else "pin"
                raise SystemExit(f"fetch_sources: lock entry sources.{path}.commit ({kind}) is "
                                 f"{commit}, but {parent} records {recorded}; run "
                                 f"`webslm toolchain refresh-lock` to correct it")
        fetch(pin["repo"], commit, dest / path)
        print(f"{path} {commit}")
    for folder in sorted(dest.rglob(".git"), reverse=True):
        shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
