"""The error kinds every command maps onto exit codes.

0 success; 1 a stage or tool failed; 2 bad input (usage, validation); 3 missing environment
(no Docker engine, image absent, offline). Each error is one line: what is wrong, then what to do.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class WebslmError(Exception):
    """Base error: carries a one-line message and the exit code the CLI returns."""

    exit_code = 1

    def __init__(self, what: str, fix: str = "") -> None:
        self.what = what.rstrip(".")
        self.fix = fix.rstrip(".")
        super().__init__(self.line())

    def line(self) -> str:
        text = f"{self.what}; {self.fix}" if self.fix else self.what
        return " ".join(text.split())


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


def exit_on_error(program: str, action: Callable[[], object]) -> None:
    """Run ACTION; an error of webslm's ends the program with its one line and exit code (for
    scripts outside the CLI: the benchmarks in bench/)."""
    try:
        action()
    except WebslmError as error:
        print(f"{program}: error: {error.line()}", file=sys.stderr)
        sys.exit(error.exit_code)
