"""`python -m webslm` is the `webslm` command."""

from webslm.launch import run

run()
