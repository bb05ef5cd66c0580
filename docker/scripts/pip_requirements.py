#!/usr/bin/env python3
"""Write the pip requirements (with --hash for every wheel) that the lock pins.

usage: pip_requirements.py LOCK > requirements.txt    (then pip install --require-hashes)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def requirements(lock: dict) -> str:
    python = lock["python"]
    entries = dict(python["packages"])
    entries["torch"] = python["torch"]
    lines = []
    for name, entry in sorted(entries.items()):
        hashes = " ".join(f"--hash=sha256:{h}" for h in entry["sha256"]
                          if not h.startswith("PLACEHOLDER:"))
        lines.append(f"{name}=={entry['version']} {hashes}".rstrip())
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(requirements(json.loads(Path(sys.argv[1]).read_text())))
