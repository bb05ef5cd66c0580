"""Headless Chromium, driven from Node.js through web/node_modules' playwright-core: where the
browser is and what a machine lacks to run it (`webslm check`; the web benchmarks in bench/)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from webslm.checkout import checkout_path, require
from webslm.errors import MissingEnvironment

WEB = checkout_path("web")
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))


def browser_missing() -> MissingEnvironment | None:
    """What driving the browser needs and this machine lacks."""
    if shutil.which("node") is None:
        return MissingEnvironment("node is not installed (the browser is driven from Node.js)",
                                  "install Node.js 20+ (apt-get install nodejs)")
    if not CHROMIUM.exists():
        return MissingEnvironment(f"no Chromium at {CHROMIUM}",
                                  "apt-get install chromium (or set CHROMIUM=/path/to/chromium)")
    if not (require(WEB) / "node_modules" / "playwright-core").is_dir():
        return MissingEnvironment("web/node_modules is missing", "run: npm ci --prefix web")
    return None
