#!/usr/bin/env python3
"""Compile every Python source under the given folders into bytecode that two builds make
byte for byte the same, once, at image build time.

Stage containers run the image read-only with PYTHONDONTWRITEBYTECODE=1, so without bytecode in
the image every stage compiles torch, NumPy, TVM and MLC-LLM again on each start and throws the
result away. What makes the .pyc files reproducible:
- PEP 552 unchecked-hash: the file holds a hash of the source, no source mtime (BuildKit's
  SOURCE_DATE_EPOCH rewrite changes mtimes), and Python never re-reads the source to check it:
  the image is read-only, so nothing can change a source after this runs;
- optimization level 0: the level a plain `python3` (no -O) loads;
- one process, sorted order, PYTHONHASHSEED=0: marshal's bytes depend on the compiling process
  (a shared interned string gets a back-reference), so parallel workers, which split the files
  differently each run, or another hash seed could change them;
- every __pycache__ removed first (pip's timestamp-based ones), so only these remain.
Each source's path is recorded as given: compile in the folder the image runs it from.
A file that does not compile cannot be imported either: it is listed and skipped.

usage: compile_bytecode.py FOLDER [FOLDER ...]
"""

from __future__ import annotations

import os
import py_compile
import shutil
import sys
from pathlib import Path

HASH_SEED = "0"


def remove_caches(folder: Path) -> None:
    for cache in sorted(folder.rglob("__pycache__")):
        if cache.is_dir() and not cache.is_symlink():
            shutil.rmtree(cache)


def compile_folder(folder: Path) -> tuple[int, list[str]]:
    """(files compiled, errors of those skipped) for every .py file under FOLDER."""
    compiled, skipped = 0, []
    for source in sorted(folder.rglob("*.py"), key=lambda path: path.as_posix()):
        if not source.is_file():
            continue
        try:
            py_compile.compile(str(source), doraise=True, optimize=0,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
            compiled += 1
        except py_compile.PyCompileError as error:
            skipped.append(f"{source}: {error.exc_type_name}")
    return compiled, skipped


def main(folders: list[str]) -> int:
    if not folders:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    if os.environ.get("PYTHONHASHSEED") != HASH_SEED:
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "PYTHONHASHSEED": HASH_SEED})
    missing = [name for name in folders if not Path(name).is_dir()]
    if missing:
        print(f"compile_bytecode.py: no such folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    for name in folders:
        folder = Path(name)
        remove_caches(folder)
        compiled, skipped = compile_folder(folder)
        print(f"{folder}: {compiled} files compiled (unchecked-hash, optimization 0)"
              + "".join(f"\n  skipped (does not compile): {line}" for line in skipped))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
