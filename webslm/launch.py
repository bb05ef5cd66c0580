"""The `webslm` command's entry point (the console script and `python -m webslm`).

It imports only the error kinds at the top: loading webslm.cli and the packages under it takes a
moment, and Ctrl-C in that moment must end like Ctrl-C at any other time, in one line with exit
130, not with the traceback of an interrupted import.

A command that loaded torch (finetune, merge) ends without Python's own teardown of the
interpreter: clearing the modules of torch's compiler, transformers and PEFT took 1.3 s after the
work was done on 2 cores (1.7 s on the H100 host: bench/RESULTS.md, issue 32), a twentieth of a
short fine-tuning run. Everything such a command writes is in place before it returns; the exit
handlers still run and the output is flushed.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

from webslm.errors import INTERRUPTED

SLOW_TEARDOWN = ("torch",)  # modules whose presence makes the interpreter's teardown slow


def run() -> None:
    """Console-script entry point."""
    try:
        from webslm.cli import main  # the slow start-up that Ctrl-C may interrupt
    except KeyboardInterrupt:
        print("webslm: interrupted while starting; nothing was done", file=sys.stderr)
        sys.exit(INTERRUPTED)
    end(main())


def end(code: int) -> NoReturn:
    """Exit with `code`: as Python does, or, after a command that loaded torch, as Python does
    up to its teardown (thread pools told to stop, threads joined, exit handlers run, output
    flushed), then at once."""
    if all(sys.modules.get(name) is None for name in SLOW_TEARDOWN):
        sys.exit(code)
    threading._shutdown()  # type: ignore[attr-defined]  # the interpreter's first shutdown step
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
