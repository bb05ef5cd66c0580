"""How a webslm program ends on an error: one line on stderr and a documented exit code, never a
traceback.

An error webslm foresaw (WebslmError, a full disk, a name too long) is its own line and code. One
nobody foresaw is a bug: its traceback goes to a crash log (`<cache>/crash/`, else the temporary
folder), and the line names that file (exit 1). WEBSLM_TRACEBACK=1 prints the traceback instead.
A crash log never holds a token: the Hugging Face token, and anything shaped like one, is
replaced by *** (as in every other message).
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from webslm import __version__
from webslm.cache import default_cache_dir
from webslm.errors import INTERRUPTED, Terminated, WebslmError, from_os_error
from webslm.hubapi import hub_token
from webslm.redaction import Redactor

TRACEBACK_SWITCH = "WEBSLM_TRACEBACK"
CRASH_FOLDER = "crash"
MESSAGE_CHARS = 160  # of an unforeseen exception's message, in its one line


def crash_folders() -> tuple[Path, ...]:
    """Where crash logs go, in order of preference."""
    return default_cache_dir() / CRASH_FOLDER, Path(tempfile.gettempdir()) / "webslm-crash"


def crash_report(program: str, error: BaseException, redactor: Redactor) -> str:
    """The text of a crash log: what ran, where, and the traceback, redacted."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lines = [f"{program} {__version__} crashed at {when}",
             f"python {platform.python_version()} on {platform.platform()}",
             f"argv: {sys.argv!r}", "",
             *traceback.format_exception(error)]
    return redactor.redact("\n".join(line.rstrip("\n") for line in lines)) + "\n"


def write_crash_log(text: str) -> Path | None:
    """A new file (readable by its owner only) holding `text`; None when no folder takes it."""
    prefix = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}-"
    for folder in crash_folders():
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=".log", dir=folder)  # mode 0600
        except OSError:
            continue
        try:  # backslashreplace: a path from a non-UTF-8 file name holds lone surrogates
            with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as handle:
                handle.write(text)
            return Path(name)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(name)
    return None


def stored_token() -> str:
    """The Hugging Face token to keep out of the log; "" when there is none or it cannot be
    read (a crash report must not crash)."""
    with contextlib.suppress(WebslmError, OSError):
        return hub_token()
    return ""


def unforeseen(program: str, error: BaseException) -> int:
    """Report an exception nobody foresaw (a bug) in one line naming its crash log; exit 1."""
    redactor = Redactor((stored_token(),))
    if os.environ.get(TRACEBACK_SWITCH, "") not in ("", "0"):
        sys.stderr.write(redactor.redact("".join(traceback.format_exception(error))))
        return 1
    what = redactor.redact(" ".join(f"{type(error).__name__}: {error}".split()))
    if len(what) > MESSAGE_CHARS:
        what = what[:MESSAGE_CHARS - 1] + "…"
    log = write_crash_log(crash_report(program, error, redactor))
    where = (f"the traceback is in {log}" if log is not None else
             "no crash log could be written")
    print(redactor.redact(f"{program}: internal error ({what}); {where} (set "
                          f"{TRACEBACK_SWITCH}=1 to print it); please report this bug"),
          file=sys.stderr)
    return 1


def ending(program: str, error: BaseException) -> int:
    """Print the one line `error` ends PROGRAM with; return its exit code."""
    if isinstance(error, OSError):
        error = from_os_error(error) or error
    if isinstance(error, WebslmError):
        print(f"{program}: error: {error.line()}", file=sys.stderr)
        return error.exit_code
    if isinstance(error, KeyboardInterrupt):
        print(f"{program}: interrupted", file=sys.stderr)
        return INTERRUPTED
    if isinstance(error, Terminated):
        print(f"{program}: terminated (SIGTERM)", file=sys.stderr)
        return Terminated.exit_code
    return unforeseen(program, error)


def exit_on_error(program: str, action: Callable[[], object]) -> None:
    """Run ACTION; any error ends the program with its one line and exit code (for scripts
    outside the CLI: the benchmarks in bench/)."""
    try:
        action()
    except (Exception, KeyboardInterrupt, Terminated) as error:  # noqa: BLE001 - one line each
        sys.exit(ending(program, error))
