"""Invoke tasks: one per `webslm` command, made from the CLI's own parser.

`invoke build --quantization q4f32_1` runs `webslm build --quantization q4f32_1`: same flags, same
defaults, same exit codes. A flag is defined once, in `webslm/cli.py`; `webslm/invoke_tasks.py`
reads the parser and makes the tasks.
"""

from webslm.invoke_tasks import cli_collection

ns = cli_collection()
