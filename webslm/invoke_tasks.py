"""Invoke tasks made from the `webslm` CLI parser, so each flag is defined once (in `cli.py`).

Every subcommand of `webslm` becomes a task of the same name (`webslm data check` becomes
`invoke data-check`) with the same flags, defaults, help and exit codes: the task only turns the
values Invoke parsed back into an argv and hands it to `webslm.cli.main`, which validates it.

Invoke's parser knows only required, single-valued positionals. webslm's optional and variadic
ones (`invoke serve [DIST ...]`, `invoke data-check F.jsonl...`, `invoke toolchain [ACTION]`) are
`_BareWords` arguments: they take every bare word that follows the task name, and none at all.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from invoke import Collection, Context, Exit, Task
from invoke.parser import Argument
from invoke.parser.parser import ParseMachine

from webslm.cli import build_parser, main


@dataclass(frozen=True)
class Command:
    """One leaf command of the CLI: its words (`("data", "check")`) and its parser."""

    words: tuple[str, ...]
    parser: argparse.ArgumentParser

    @property
    def task_name(self) -> str:
        return "-".join(self.words)

    @property
    def actions(self) -> list[argparse.Action]:
        return [a for a in self.parser._actions if not isinstance(a, argparse._HelpAction)]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_commands(parser: argparse.ArgumentParser | None = None,
                 words: tuple[str, ...] = ()) -> Iterator[Command]:
    """Every leaf command under `parser` (default: the `webslm` parser), depth first."""
    parser = parser or build_parser()
    children = _subcommands(parser)
    if not children and words:
        yield Command(words, parser)
    for name, child in children.items():
        yield from cli_commands(child, (*words, name))


def is_bare_words(action: argparse.Action) -> bool:
    """A positional that may be absent or repeated (nargs ?, * or +)."""
    return not action.option_strings and action.nargs in ("?", "*", "+")


class _BareWords(Argument):
    """Takes every bare word after its task name; absent is allowed (the CLI applies defaults).

    Invoke hands a bare word to the first positional whose value is None, and once a task's
    arguments end it refuses any positional still None. This argument reads as None (still
    wanting words) while Invoke's parser reads words, and as its list everywhere else.
    """

    @property
    def value(self) -> Any:
        return None if _parser_is_reading_a_word() else list(self._value or [])

    @value.setter
    def value(self, word: str) -> None:
        self._value = [*(self._value or []), word]
        self.raw_value = word


def _parser_is_reading_a_word() -> bool:
    """True while Invoke's parser decides what a word on the command line is."""
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_code.co_name == "handle" and isinstance(frame.f_locals.get("self"),
                                                           ParseMachine):
            return True
        frame = frame.f_back
    return False


def _invoke_argument(action: argparse.Action) -> Argument:
    help_text = (action.help or "").replace("%(default)s", str(action.default))
    if is_bare_words(action):
        return _BareWords(name=action.dest, positional=True, kind=list, help=help_text)
    if not action.option_strings:
        return Argument(name=action.dest, positional=True, help=help_text)
    flag = max(action.option_strings, key=len).lstrip("-")
    names = (flag,)
    if isinstance(action, argparse._StoreTrueAction):
        kind: type = bool
    elif isinstance(action, argparse._AppendAction):
        kind = list
    else:
        kind = action.type if isinstance(action.type, type) else str
    attr_name = action.dest if action.dest != flag else None
    return Argument(names=names, attr_name=attr_name, kind=kind,
                    default=False if kind is bool else None, help=help_text)


def argv_for(command: Command, values: dict[str, Any]) -> list[str]:
    """The `webslm` argv that means what Invoke parsed (`values` keyed by argparse dest)."""
    positionals: list[str] = []
    flags: list[str] = []
    for action in command.actions:
        value = values.get(action.dest)
        if value is None or value is False or value == []:
            continue
        if not action.option_strings:
            positionals += [str(v) for v in value] if isinstance(value, list) else [str(value)]
            continue
        flag = max(action.option_strings, key=len)
        if value is True:
            flags.append(flag)
        elif isinstance(value, list):
            for item in value:
                flags += [flag, str(item)]
        else:
            flags += [flag, str(value)]
    return [*command.words, *positionals, *flags]


class CliTask(Task):
    """An Invoke task whose arguments are read from a CLI command's parser."""

    def __init__(self, command: Command) -> None:
        def run(c: Context, **values: Any) -> None:
            code = main(argv_for(command, values))
            if code:
                raise Exit(code=code)

        run.__doc__ = command.parser.description
        super().__init__(run, name=command.task_name, positional=[], auto_shortflags=False)
        self.command = command

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        return [_invoke_argument(action) for action in self.command.actions]


def cli_collection(commands: Sequence[Command] | None = None) -> Collection:
    """One task per CLI command."""
    collection = Collection()
    for command in commands if commands is not None else list(cli_commands()):
        collection.add_task(CliTask(command))
    return collection
