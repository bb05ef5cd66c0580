"""`webslm serve`: the web client and built models on one local origin.

URL layout (what the AppConfig's default base URL `http://127.0.0.1:8000/models` expects):
  /                                        the web client (web/dist/, built from web/)
  /models/index.json                       {"models": [URL of each webllm-app-config.json]}
  /models/<name>/resolve/main/<file>       <dist>/<name>/<file>
`resolve/main/` is in every model URL because web-llm 0.2.79 appends it to URLs lacking it.

The standard library's threading HTTP server is enough for one user on localhost; what it lacks
is added here: MIME types web-llm needs (application/wasm for streaming compilation), single
HTTP ranges, cache headers (weights and libraries cached for a year, configs always revalidated:
a rebuild that reuses a URL is caught by the app's integrity check, which then refetches), and
a strict path check so no URL reaches outside the served folders.
"""

from __future__ import annotations

import email.utils
import errno
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from webslm.checkout import checkout_path, require
from webslm.crash import unforeseen
from webslm.errors import BadInput, MissingEnvironment, StageFailed
from webslm.files import canonical_json
from webslm.layout import APP_CONFIG_FILE

MODELS_PREFIX = "/models/"
MODEL_FOLDER = "resolve/main"
INDEX_PATH = "/models/index.json"
WEB_SOURCE = checkout_path("web")
BUILD_COMMAND = "npm ci --prefix web && npm run build --prefix web"
LONG_CACHE = "public, max-age=31536000, immutable"
NO_CACHE = "no-cache"
COPY_CHUNK = 1 << 20
MAX_PORT = 65535
MAX_POSITION = 1 << 62  # beyond any file: a Range number past it means "past the end"
MIME_TYPES = {
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
LONG_CACHED_SUFFIXES = (".wasm", ".bin")


# ---------------------------------------------------------------------------- what is served


@dataclass(frozen=True)
class ServedModel:
    """A dist model folder and the name it is served under."""

    name: str
    folder: Path


@dataclass(frozen=True)
class Site:
    """Everything one server serves: the built web client and the model folders."""

    web: Path
    models: tuple[ServedModel, ...]


def find_models(dists: Sequence[Path]) -> tuple[ServedModel, ...]:
    """Model folders named directly or found one level below each DIST argument."""
    models: dict[str, ServedModel] = {}
    for dist in dists:
        if not dist.is_dir():
            raise BadInput(f"{dist} is not a folder",
                           "pass a dist folder made by `invoke build` (default: dist)")
        if (dist / APP_CONFIG_FILE).is_file():
            found = [dist]
        else:
            found = sorted(p for p in dist.iterdir()
                           if not p.name.startswith(".") and (p / APP_CONFIG_FILE).is_file())
        if not found:
            raise BadInput(f"{dist} holds no model (no {APP_CONFIG_FILE} in it or its subfolders)",
                           "build one with `invoke build --out <folder>` and serve that folder")
        for folder in found:
            name = folder.resolve().name
            if name in models:
                raise BadInput(f"two models are named {name!r} ({models[name].folder} and "
                               f"{folder})", "serve only one of them, or rebuild with --name")
            models[name] = ServedModel(name=name, folder=folder.resolve())
    return tuple(models.values())


def model_url_path(name: str, file: str = "") -> str:
    return f"{MODELS_PREFIX}{name}/{MODEL_FOLDER}/{file}"


def models_index(models: Sequence[ServedModel]) -> dict[str, list[str]]:
    """The index the web client reads when no ?config= is given."""
    return {"models": [model_url_path(m.name, APP_CONFIG_FILE) for m in models]}


def content_type(name: str) -> str:
    return MIME_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")


def cache_control(name: str) -> str:
    """Weight shards and libraries are large and change only with a rebuild: cache them long."""
    return LONG_CACHE if name.endswith(LONG_CACHED_SUFFIXES) else NO_CACHE


def safe_file(root: Path, relative: str) -> Path | None:
    """The regular file `relative` names under `root`, or None for anything that leaves it.

    Rejects empty, `.`/`..` and hidden segments, backslashes and NULs, then checks the resolved
    path (symbolic links included) still lies inside `root`.
    """
    segments = relative.split("/")
    if any(s in ("", ".", "..") or s.startswith(".") or "\\" in s or "\0" in s
           for s in segments):
        return None
    try:
        candidate = root.joinpath(*segments).resolve()
        if not candidate.is_relative_to(root.resolve()) or not candidate.is_file():
            return None
    except (OSError, RuntimeError):  # a name too long, a symbolic link loop (RuntimeError)
        return None
    return candidate


@dataclass(frozen=True)
class Route:
    """What a URL path maps to: a file on disk, or generated bytes."""

    path: Path | None
    body: bytes | None
    name: str
    cross_origin: bool


def route(site: Site, url_path: str) -> Route | None:
    """The file or generated document for a request path; None means 404."""
    path = unquote(urlsplit(url_path).path)
    if path == INDEX_PATH:
        body = canonical_json(models_index(site.models)).encode()
        return Route(path=None, body=body, name="index.json", cross_origin=True)
    if path.startswith(MODELS_PREFIX):
        name, _, rest = path[len(MODELS_PREFIX):].partition("/")
        model = next((m for m in site.models if m.name == name), None)
        prefix = MODEL_FOLDER + "/"
        if model is None or not rest.startswith(prefix):
            return None
        found = safe_file(model.folder, rest[len(prefix):])
        return Route(found, None, found.name, True) if found else None
    relative = path.lstrip("/") or "index.html"
    found = safe_file(site.web, relative)
    return Route(found, None, found.name, False) if found else None


# ---------------------------------------------------------------------------- byte ranges


class RangeNotSatisfiable(Exception):
    """The Range header asks for bytes the file does not have (HTTP 416)."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def requested_range(header: str | None, size: int) -> ByteRange | None:
    """The single range a Range header asks for; None means send the whole file.

    Malformed headers and multi-range requests are answered with the whole file (RFC 9110
    allows ignoring Range); ranges starting past the end raise RangeNotSatisfiable.
    """
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, dash, last = header[len("bytes="):].strip().partition("-")
    start, end = byte_position(first), byte_position(last)
    if not dash or (start is None and end is None):
        return None
    if (first and start is None) or (last and end is None) or \
            (start is not None and end is not None and end < start):
        return None
    if start is None:
        assert end is not None
        if end == 0 or size == 0:
            raise RangeNotSatisfiable
        return ByteRange(max(size - end, 0), size - 1)
    if start >= size:
        raise RangeNotSatisfiable
    return ByteRange(start, min(end, size - 1) if end is not None else size - 1)


def byte_position(text: str) -> int | None:
    """An ASCII decimal number from a Range header, None if it is not one; numbers past
    MAX_POSITION (any file's size) count as MAX_POSITION instead of costing a huge int()."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    return MAX_POSITION if len(text) > len(str(MAX_POSITION)) else min(int(text), MAX_POSITION)


# ---------------------------------------------------------------------------- the server


class SiteHandler(BaseHTTPRequestHandler):
    """GET and HEAD over a Site; everything else gets http.server's 501."""

    server: SiteServer
    protocol_version = "HTTP/1.1"

    def handle(self) -> None:
        """The requests of one connection. A client that goes away mid-answer (a cancelled
        download, a closed tab) is normal: one short log line, not a traceback."""
        try:
            super().handle()
        except ConnectionError as error:  # BrokenPipeError, ConnectionResetError, ...
            asked = getattr(self, "requestline", "") or "its request"
            self.log_message("closed the connection during %s (%s)", asked,
                             type(error).__name__)

    def do_GET(self) -> None:
        self.respond(send_body=True)

    def do_HEAD(self) -> None:
        self.respond(send_body=False)

    def respond(self, *, send_body: bool) -> None:
        found = route(self.server.site, self.path)
        if found is None:
            self.send_text(HTTPStatus.NOT_FOUND, "not found\n", send_body)
            return
        if found.body is not None:
            self.send_bytes(found, found.body, send_body)
            return
        assert found.path is not None
        size = found.path.stat().st_size
        try:
            wanted = requested_range(self.headers.get("Range"), size)
        except RangeNotSatisfiable:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        part = wanted or ByteRange(0, size - 1)
        self.send_response(HTTPStatus.PARTIAL_CONTENT if wanted else HTTPStatus.OK)
        self.common_headers(found, part.length if size else 0)
        if wanted:
            self.send_header("Content-Range", f"bytes {part.start}-{part.end}/{size}")
        self.send_header("Last-Modified",
                         email.utils.formatdate(found.path.stat().st_mtime, usegmt=True))
        self.end_headers()
        if send_body and size:
            with open(found.path, "rb") as handle:
                handle.seek(part.start)
                left = part.length
                while left > 0 and (chunk := handle.read(min(COPY_CHUNK, left))):
                    self.wfile.write(chunk)
                    left -= len(chunk)

    def common_headers(self, found: Route, length: int) -> None:
        self.send_header("Content-Type", content_type(found.name))
        self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", cache_control(found.name))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("X-Content-Type-Options", "nosniff")
        if found.cross_origin:
            self.send_header("Access-Control-Allow-Origin", "*")

    def send_bytes(self, found: Route, body: bytes, send_body: bool) -> None:
        self.send_response(HTTPStatus.OK)
        self.common_headers(found, len(body))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def send_text(self, status: HTTPStatus, text: str, send_body: bool) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        self.server.log(f"{self.address_string()} {format % args}")


class SiteServer(ThreadingHTTPServer):
    """A threading HTTP server that knows its Site and where its access log goes."""

    daemon_threads = True

    def __init__(self, site: Site, address: tuple[str, int],
                 log: Callable[[str], None]) -> None:
        self.site = site
        self.log = log
        super().__init__(address, SiteHandler)

    @property
    def url(self) -> str:
        """The address to open (with the port the system chose when asked for port 0)."""
        return f"http://{self.server_address[0]!s}:{self.server_port}/"

    def handle_error(self, request: object, client_address: object) -> None:
        """A request that failed in a way nobody foresaw (a bug): one line naming the crash
        log, and the server keeps serving the other requests."""
        unforeseen("webslm serve", sys.exc_info()[1] or RuntimeError("unknown error"))


def check_port(port: int) -> None:
    if not 0 <= port <= MAX_PORT:
        raise BadInput(f"--port {port} is not a TCP port", f"pass a port from 1 to {MAX_PORT} "
                       "(0 picks a free one)")


def make_server(site: Site, host: str = "127.0.0.1", port: int = 8000,
                log: Callable[[str], None] | None = None) -> SiteServer:
    """A bound, not yet running server (port 0 picks a free port)."""
    check_port(port)
    try:
        return SiteServer(site, (host, port), log or (lambda line: print(line, file=sys.stderr)))
    except OSError as error:
        why = error.strerror or str(error)
        fix = ("pass another --port, or stop the program using it"
               if error.errno in (errno.EADDRINUSE, errno.EACCES) else
               "pass a --host this machine has, e.g. 127.0.0.1")
        raise BadInput(f"cannot listen on {host}:{port}: {why}", fix) from error


@contextmanager
def serving_in_thread(site: Site, log: Callable[[str], None] | None = None
                      ) -> Iterator[SiteServer]:
    """SITE served from a thread on a free 127.0.0.1 port while the block runs (a browser run
    of `webslm check`, the web benchmarks); the access log goes to LOG, else nowhere."""
    server = make_server(site, "127.0.0.1", 0, log=log or (lambda line: None))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# ---------------------------------------------------------------------------- the web bundle


def bundle_inputs(web: Path) -> list[Path]:
    """Files whose change makes web/dist stale (the lock carries the web-llm pin)."""
    sources = [p for p in (web / "src").rglob("*") if p.is_file()]
    named = [*sorted(web.glob("*.html")), web / "build.mjs", web / "package-lock.json",
             web.parent / "docker" / "toolchain.lock.json"]
    return sources + [p for p in named if p.exists()]


def bundle_is_stale(web: Path) -> bool:
    stamp = web / "dist" / "build-info.json"
    if not stamp.is_file():
        return True
    built = stamp.stat().st_mtime
    return any(p.stat().st_mtime > built for p in bundle_inputs(web))


def ensure_web_bundle(web: Path = WEB_SOURCE) -> Path:
    """web/dist, rebuilt first when missing or older than its sources (about a second)."""
    if not (require(web) / "package.json").is_file():
        raise MissingEnvironment(f"the web client's sources are not at {web}",
                                 "run `webslm serve` from a checkout of the webslm repository")
    if not bundle_is_stale(web):
        return web / "dist"
    node = shutil.which("node")
    if node is None or not (web / "node_modules").is_dir():
        raise MissingEnvironment("the web client is not built (web/dist is missing or stale)",
                                 f"install Node.js 20+ and run: {BUILD_COMMAND}")
    print("webslm: building the web client (web/dist)…", file=sys.stderr)
    done = subprocess.run([node, str(web / "build.mjs")], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise StageFailed(f"building the web client failed: {lines[-1] if lines else '?'}",
                          f"fix it, then run: {BUILD_COMMAND}")
    return web / "dist"


def serve_command(dists: list[Path], host: str = "127.0.0.1", port: int = 8000) -> int:
    """Serve until Ctrl-C; the URL to open is printed first."""
    check_port(port)
    models = find_models(dists)
    site = Site(web=ensure_web_bundle(), models=models)
    server = make_server(site, host, port)
    names = ", ".join(m.name for m in site.models)
    print(f"webslm: serving {names} with the web client at {server.url}  (Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
