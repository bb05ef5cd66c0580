"""Invoke and the CLI are one surface: tasks.py's tasks are made from the CLI parser, so every
command and flag exists in both, and an Invoke command line reaches `webslm` as the same argv."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, tasks_namespace
from invoke import Program

import webslm.invoke_tasks as invoke_tasks
from webslm.invoke_tasks import cli_commands, is_bare_words


def cli_surface(actions: list[argparse.Action]) -> set[str]:
    return {max(a.option_strings, key=len) if a.option_strings else a.dest for a in actions}


def invoke_surface(task) -> set[str]:
    return {("--" + arg.names[0]) if not arg.positional else arg.name
            for arg in task.get_arguments()}


def test_every_cli_command_is_a_task_with_the_same_flags() -> None:
    namespace = tasks_namespace()
    commands = list(cli_commands())
    assert {c.task_name for c in commands} == set(namespace.task_names)
    assert {"build", "toolchain", "verify", "audit", "serve", "publish", "spec", "normalize",
            "finetune", "merge", "data-check", "bench"} <= set(namespace.task_names)
    for command in commands:
        assert invoke_surface(namespace[command.task_name]) == cli_surface(command.actions), (
            command.task_name)


@pytest.fixture
def argv_seen(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    seen: list[list[str]] = []
    monkeypatch.setattr(invoke_tasks, "main", lambda argv: seen.append(argv) or 0)
    return seen


@pytest.mark.parametrize(("invoke_argv", "webslm_argv"), [
    (["serve"], ["serve"]),
    (["serve", "dist"], ["serve", "dist"]),
    (["serve", "dist/a", "dist/b", "--port", "8001"],
     ["serve", "dist/a", "dist/b", "--port", "8001"]),
    (["serve", "--dist", "dist/a", "--dist", "dist/b"],
     ["serve", "--dist", "dist/a", "--dist", "dist/b"]),
    (["serve", "dist/a", "--dist", "dist/b"], ["serve", "dist/a", "--dist", "dist/b"]),
    (["data-check", "a.jsonl", "b.jsonl", "--tokenizer", "t"],
     ["data", "check", "a.jsonl", "b.jsonl", "--tokenizer", "t"]),
    (["toolchain", "id"], ["toolchain", "id"]),
    (["toolchain"], ["toolchain"]),
    (["verify", "dist/x", "--report", "r"], ["verify", "dist/x", "--report", "r"]),
    (["build", "--no-cache", "--jobs", "2", "--cpus", "1.5", "--preset", "a,b"],
     ["build", "--preset", "a,b", "--no-cache", "--jobs", "2", "--cpus", "1.5"]),
    (["spec", "--context-window-size", "8", "--system-prompt", "Be brief."],
     ["spec", "--context-window-size", "8", "--system-prompt", "Be brief."]),
    (["finetune", "--data", "a.jsonl", "--data", "b.jsonl"],
     ["finetune", "--data", "a.jsonl", "--data", "b.jsonl"]),
])
def test_an_invoke_command_line_reaches_webslm_unchanged(argv_seen: list[list[str]],
                                                         invoke_argv: list[str],
                                                         webslm_argv: list[str]) -> None:
    Program(namespace=tasks_namespace()).run(["invoke", *invoke_argv], exit=False)
    assert argv_seen == [webslm_argv]


def test_bare_word_arguments_are_the_optional_and_variadic_positionals() -> None:
    by_name = {c.task_name: c for c in cli_commands()}
    bare = {c.task_name: [a.dest for a in c.actions if is_bare_words(a)] for c in by_name.values()}
    assert bare["serve"] and bare["data-check"] == ["files"] and bare["toolchain"] == ["action"]
    assert bare["verify"] == []  # a required positional stays Invoke's own kind


def test_invoke_returns_the_cli_exit_code_and_its_one_line_error() -> None:
    bad = subprocess.run([sys.executable, "-m", "invoke", "spec", "--quantization", "q4f16"],
                         cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert bad.stderr.startswith("webslm: error: ") and "q4f16_1" in bad.stderr
    assert bad.stderr.count("\n") == 1
