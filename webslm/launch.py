"""The `webslm` command's entry point (the console script and `python -m webslm`).

It imports only the error kinds at the top: loading webslm.cli and the packages under it takes a
moment, and Ctrl-C in that moment must end like Ctrl-C at any other time, in one line with exit
130, not with the traceback of an interrupted import.
"""

from __future__ import annotations

import sys

from webslm.errors import INTERRUPTED


def run() -> None:
    """Console-script entry point."""
    try:
        from webslm.cli import main  # the slow start-up that Ctrl-C may interrupt
    except KeyboardInterrupt:
        print("webslm: interrupted while starting; nothing was done", file=sys.stderr)
        sys.exit(INTERRUPTED)
    sys.exit(main())
