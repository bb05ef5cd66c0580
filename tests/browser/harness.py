"""pytest's side of tests/browser/driver.mjs: a headless Chromium driven over a line protocol,
`invoke serve`'s server running in a thread on a free 127.0.0.1 port, and the web client with the
scripted engine worker (scripted_worker.js, a TEST STAND-IN)."""

from __future__ import annotations

import itertools
import json
import os
import select
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from webslm.chromium import browser_missing as product_browser_missing
from webslm.serve import serving_in_thread

REPO = Path(__file__).resolve().parent.parent.parent
DRIVER = Path(__file__).with_name("driver.mjs")
ARTIFACTS = REPO / "test-artifacts" / "web"
REPLY_TIMEOUT_S = 60.0
SCRIPTED_WORKER = Path(__file__).with_name("scripted_worker.js")


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    missing = product_browser_missing()
    return missing.line() if missing else None


class DriverError(Exception):
    """The driver reported a failure (a timeout, a missing element)."""


class Browser:
    """One driver process: up to two Chromium instances (with and without WebGPU)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(["node", str(DRIVER)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, cwd=REPO)
        self.ids = itertools.count(1)

    def call(self, op: str, **fields: Any) -> Any:
        assert self.process.stdin and self.process.stdout
        request_id = next(self.ids)
        self.process.stdin.write(json.dumps({"id": request_id, "op": op, **fields}) + "\n")
        self.process.stdin.flush()
        waited = max(REPLY_TIMEOUT_S, fields.get("timeout", 0) / 1000 + 10)  # a wait's own limit
        ready, _, _ = select.select([self.process.stdout], [], [], waited)
        if not ready:
            raise DriverError(f"no reply to {op} within {waited} s")
        line = self.process.stdout.readline()
        if not line:
            raise DriverError(f"the driver exited (code {self.process.poll()}) during {op}")
        reply = json.loads(line)
        assert reply["id"] == request_id
        if not reply["ok"]:
            raise DriverError(f"{op}: {reply['error']}")
        return reply["value"]

    def page(self, *, webgpu: bool) -> Page:
        return Page(self, self.call("open", webgpu=webgpu))

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def open_app(browser: Browser, url: str, *, webgpu: bool = True) -> Page:
    """A fresh page with the web client at url, once it has booted (models listed)."""
    page = browser.page(webgpu=webgpu)
    page.goto(url=url)
    page.wait_for("document.body.dataset.ready === 'yes'")
    return page


class Page:
    """A page in a fresh browser context."""

    def __init__(self, browser: Browser, page_id: int) -> None:
        self.browser = browser
        self.id = page_id

    def __getattr__(self, op: str) -> Any:
        return lambda **fields: self.browser.call(op, page=self.id, **fields)

    def text(self, selector: str) -> str:
        return self.eval(js=f"document.querySelector({json.dumps(selector)})?.innerText ?? ''")

    def wait_for(self, js: str, timeout_ms: int = 20000) -> None:
        self.wait(js=js, timeout=timeout_ms)

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.screenshot(path=str(path))
        return path


@contextmanager
def running_server(site: Any) -> Iterator[tuple[str, list[str]]]:
    """The site served on a free 127.0.0.1 port: (base URL, access log lines)."""
    log: list[str] = []
    with serving_in_thread(site, log=log.append) as server:
        yield server.url, log


def scripted_web(web_dist: Path, target: Path) -> Path:
    """A copy of the built web client whose worker.js runs the scripted engine (TEST STAND-IN)."""
    web = target / "web-scripted"
    shutil.copytree(web_dist, web)
    node_modules = REPO / "web" / "node_modules"
    done = subprocess.run(
        [str(node_modules / ".bin" / "esbuild"), str(SCRIPTED_WORKER), "--bundle", "--format=esm",
         f"--outfile={web / 'worker.js'}", "--log-level=warning"],
        capture_output=True, text=True, check=False, timeout=120,
        env={**os.environ, "NODE_PATH": str(node_modules)})
    assert done.returncode == 0, done.stderr
    return web
