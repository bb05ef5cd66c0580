"""Keeping the Hugging Face token out of every message and log, wherever the text came from.

A token can reach text by any road: a repo id a user typed (`--repo hf_.../x`), a server's
answer, an exception's arguments, a log record of huggingface_hub. So redaction is done where
text leaves the program, not where it is made: every WebslmError line (webslm.errors), the CLI's
stdout and stderr and every log record while a command runs (`redacted_output`). What goes: the
token in use (HF_TOKEN, or the one webslm handed to huggingface_hub: `remember_secret`) and
anything shaped like a Hugging Face token.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

TOKEN_SHAPES = re.compile(r"\b(?:hf_|api_org_)[A-Za-z0-9]{20,}|(?i:bearer)\s+[^\s'\"]+")
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
REDACTED = "***"
SHORTEST_SECRET = 8  # a shorter "token" would redact ordinary words; no real token is that short

_remembered: set[str] = set()


def remember_secret(secret: str) -> None:
    """A token webslm uses (read from huggingface_hub's login): redacted from now on."""
    if len(secret) >= SHORTEST_SECRET:
        _remembered.add(secret)


def known_secrets() -> tuple[str, ...]:
    """The tokens in use: the environment's and the remembered ones."""
    found = {os.environ.get(name, "") for name in TOKEN_VARIABLES} | _remembered
    return tuple(sorted((s for s in found if len(s) >= SHORTEST_SECRET), key=len, reverse=True))


@dataclass(frozen=True)
class Redactor:
    """Replaces the given secrets, the tokens in use and anything shaped like a Hugging Face
    token with ***."""

    secrets: tuple[str, ...] = ()

    def redact(self, text: str) -> str:
        for secret in (*self.secrets, *known_secrets()):
            if secret:
                text = text.replace(secret, REDACTED)
        return TOKEN_SHAPES.sub(
            lambda m: REDACTED if not m.group().lower().startswith("bearer")
            else m.group().split()[0] + " " + REDACTED, text)

    def scrub(self, record: logging.LogRecord) -> logging.LogRecord:
        """A log record whose message and traceback text are redacted (arguments merged in)."""
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed %-format: keep the template only
            message = str(record.msg)
        record.msg, record.args = self.redact(message), ()
        if record.exc_info:
            record.exc_text = self.redact("".join(traceback.format_exception(*record.exc_info)))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return record


def redact(text: str) -> str:
    """Text with the tokens in use and anything shaped like a token replaced by ***."""
    return Redactor().redact(text)


@contextlib.contextmanager
def redacted_logs(redactor: Redactor) -> Iterator[None]:
    """While inside, every log record made by any logger is redacted as it is created."""
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return redactor.scrub(previous(*args, **kwargs))

    logging.setLogRecordFactory(factory)
    try:
        yield
    finally:
        logging.setLogRecordFactory(previous)


class RedactedStream:
    """A text stream whose writes are redacted; everything else is the wrapped stream's."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def redacted_output() -> Iterator[None]:
    """While a command runs: stdout, stderr and every log record are redacted."""
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactedStream(sys.stdout), RedactedStream(sys.stderr)
    try:
        with redacted_logs(Redactor()):
            yield
    finally:
        sys.stdout, sys.stderr = streams
