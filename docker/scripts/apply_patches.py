#!/usr/bin/env python3
"""Apply the TVM patches in PATCH_DIR (determinism; the prebuilt runtime link) to TVM_DIR.

Each patch module names a FILE and EDITS, pairs of (exact anchor, replacement). An edit whose
replacement is already present is skipped (the script is idempotent); otherwise its anchor must
occur exactly once, or the build stops: the pinned tree differs from the code the patch was
written for, and a silently unpatched compiler would write non-reproducible wasm (or link
slowly).

usage: apply_patches.py PATCH_DIR TVM_DIR      exit 0 applied/already applied, 1 anchor missing
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


class AnchorMissing(Exception):
    pass


def apply_patch(patch: Path, tree: Path) -> list[str]:
    """Apply one patch module to `tree`; return a line per edit (applied / already applied)."""
    spec = runpy.run_path(str(patch))
    target = tree / spec["FILE"]
    if not target.is_file():
        raise AnchorMissing(f"{patch.name}: {spec['FILE']} does not exist in {tree}")
    text = target.read_text(encoding="utf-8")
    report = []
    for index, (anchor, replacement) in enumerate(spec["EDITS"], 1):
        if replacement in text:
            report.append(f"{patch.name} edit {index}: already applied")
            continue
        count = text.count(anchor)
        if count != 1:
            raise AnchorMissing(f"{patch.name} edit {index}: anchor found {count} times in "
                                f"{spec['FILE']} (expected once); the pinned TVM tree differs "
                                "from the code this patch was written for")
        text = text.replace(anchor, replacement)
        report.append(f"{patch.name} edit {index}: applied")
    target.write_text(text, encoding="utf-8")
    return report


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write(__doc__ or "")
        return 2
    patches = sorted(Path(argv[1]).glob("*.py"))
    if not patches:
        sys.stderr.write(f"no patches in {argv[1]}\n")
        return 1
    try:
        for patch in patches:
            for line in apply_patch(patch, Path(argv[2])):
                print(line)
    except AnchorMissing as error:
        sys.stderr.write(f"apply_patches: {error}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
