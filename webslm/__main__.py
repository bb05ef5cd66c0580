"""`python -m webslm` is the `webslm` command."""

from webslm.cli import run

run()
