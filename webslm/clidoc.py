"""docs/cli.md, rendered from the `webslm` parser, so the CLI reference cannot drift from the code.

Every leaf command gets a section with its Invoke task name, its description and one table row per
argument (flags, choices, default, help as `--help` shows it). tests/test_docs.py checks that the
committed page equals this output; regenerate it with `python -m webslm.clidoc > docs/cli.md`.
"""

from __future__ import annotations

import argparse

from webslm.invoke_tasks import Command, cli_commands

REGENERATE = "python -m webslm.clidoc > docs/cli.md"

_HEADER = f"""# CLI reference

Every command of `webslm` is also an Invoke task of the same name, with the same flags, defaults
and exit codes (`webslm data check` is `invoke data-check`). Exit codes: 0 ok, 1 a stage or tool
failed (or a bug: one line naming its crash log), 2 bad input, 3 missing environment, 130 / 143
stopped by Ctrl-C / SIGTERM. A number a flag cannot take (`--cpus nan`, `--memory 1m`) is exit 2
before anything runs.

This page is generated from the parser in `webslm/cli.py` (`{REGENERATE}`);
a test fails when it is out of date.
"""


def _cell(text: str) -> str:
    """Text made safe for one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _argument(action: argparse.Action) -> str:
    """How the argument is written on the command line: `--jobs JOBS`, `{build,id}`, `DIST ...`."""
    if action.choices is not None:
        value = "{" + ",".join(str(c) for c in action.choices) + "}"
    elif action.metavar:
        value = str(action.metavar)
    else:
        value = action.dest if not action.option_strings else action.dest.upper()
    if not action.option_strings:
        return f"`{value} ...`" if action.nargs in ("*", "+") else f"`{value}`"
    names = ", ".join(action.option_strings)
    return f"`{names}`" if action.nargs == 0 else f"`{names} {value}`"


def _help(action: argparse.Action) -> str:
    """The help text with `%(default)s` and friends filled in, as `--help` prints it."""
    params = {**vars(action), "prog": "", "default": action.default}
    text = (action.help or "") % params
    if action.required and action.option_strings:
        text = f"required; {text}"
    return _cell(text)


def _section(command: Command) -> str:
    parser = command.parser
    lines = [f"## `webslm {' '.join(command.words)}`", "",
             f"Invoke: `invoke {command.task_name}`. {_cell(parser.description or '')}", ""]
    lines += ["| argument | help |", "| --- | --- |"]
    lines += [f"| {_argument(a)} | {_help(a)} |" for a in command.actions]
    return "\n".join(lines) + "\n"


def render(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole docs/cli.md for `parser` (default: the `webslm` parser)."""
    sections = [_section(c) for c in cli_commands(parser)]
    return "\n".join([_HEADER, *sections])


if __name__ == "__main__":
    print(render(), end="")
