"""The error kinds every command maps onto exit codes.

0 success; 1 a stage or tool failed; 2 bad input (usage, validation); 3 missing environment
(no Docker engine, image absent, offline). Each error is one line: what is wrong, then what to do.
"""

from __future__ import annotations

import errno

from webslm.redaction import redact


class WebslmError(Exception):
    """Base error: carries a one-line message and the exit code the CLI returns."""

    exit_code = 1

    def __init__(self, what: str, fix: str = "") -> None:
        self.what = what.rstrip(".")
        self.fix = fix.rstrip(".")
        super().__init__(self.line())

    def line(self) -> str:
        """The one line printed and reported, with any Hub token in it redacted."""
        text = f"{self.what}; {self.fix}" if self.fix else self.what
        return redact(" ".join(text.split()))


class StageFailed(WebslmError):
    """A stage or an external tool ran and failed."""

    exit_code = 1


class BadInput(WebslmError):
    """The user's input (arguments, files, specs) is invalid."""

    exit_code = 2


class MissingEnvironment(WebslmError):
    """Something the machine must provide is absent: Docker engine, image, network."""

    exit_code = 3


class Terminated(BaseException):
    """SIGTERM arrived (CI cancelled, `timeout`): unwinds like KeyboardInterrupt, so every
    cleanup on the way out runs (containers removed, temporary folders deleted)."""

    exit_code = 143  # 128 + SIGTERM, as a shell reports it


INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def from_os_error(error: OSError) -> WebslmError | None:
    """The error an OSError is to a user, where it is the machine's state or the user's input
    rather than a bug: a full disk or quota (exit 3), a name too long (exit 2); else None."""
    where = f" ({error.filename})" if error.filename else ""
    if error.errno in NO_SPACE:
        return MissingEnvironment(f"no space left on the device{where}",
                                  "free some space, or choose a folder on another disk")
    if error.errno == errno.ENAMETOOLONG:
        return BadInput(f"a file name is too long for the file system{where}",
                        "choose a shorter path")
    return None
