"""The CLI contract: usage errors are one line with exit 2, every argument is documented in
`--help`, `webslm` works as installed, and the light commands start without loading torch,
transformers or the Docker SDK."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from webslm.cli import build_parser, main
from webslm.invoke_tasks import cli_commands
from webslm.spec import DEFAULT_PRESET, PRESETS


@pytest.mark.parametrize(
    "argv",
    [[], ["bogus"], ["build", "--jobs", "many"], ["toolchain", "explode"], ["publish", "dist"],
     ["build", "--preset", "qwen2.5-0.5b", "--model", "Org/X"]],
)
def test_usage_errors_are_one_line_and_exit_2(capsys, argv: list[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("webslm: error: ") and err.count("\n") == 1


@pytest.mark.parametrize("command", list(cli_commands()), ids=lambda c: c.task_name)
def test_every_argument_says_what_it_is_and_its_default(command) -> None:
    """`webslm X --help` (and `invoke X --help`, made from the same parser) explains every
    argument, and names the default of every one that has a value when left out."""
    for action in command.actions:
        name = "/".join(action.option_strings) or action.dest
        assert action.help, f"{command.task_name} {name} has no help text"
        if action.default not in (None, False, []):
            assert "default" in action.help, f"{command.task_name} {name} hides its default"
    assert "%(default)" not in command.parser.format_help()


def test_finetune_trains_the_default_build_model_by_default() -> None:
    """`webslm finetune` with no --base fine-tunes the model `webslm build` builds by default."""
    args = build_parser().parse_args(["finetune", "--data", "chat.jsonl"])
    assert args.base == PRESETS[DEFAULT_PRESET].model


def test_installed_console_script_runs() -> None:
    webslm = Path(sys.executable).parent / "webslm"
    assert webslm.exists(), "pip install -e . provides the webslm console script"
    result = subprocess.run([webslm, "spec", "--preset", "smollm2-135m"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0 and '"conv_template": "chatml"' in result.stdout


HEAVY = ("torch", "transformers", "docker")


@pytest.mark.parametrize("argv", [
    None,  # the CLI's start-up: importing webslm.cli, which imports every command's module
    ["spec", "--preset", "smollm2-135m"],
    ["data", "check", "{data}"],
])
def test_light_commands_load_no_heavy_package(tmp_path: Path, argv: list[str] | None) -> None:
    """torch and transformers take seconds to import; only check, finetune and merge need them
    (and the Docker SDK only the commands that run containers)."""
    data = tmp_path / "chat.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "Hi"}, '
                    '{"role": "assistant", "content": "Hello"}]}\n', encoding="utf-8")
    run = "" if argv is None else "assert main(sys.argv[1:]) == 0; "
    probe = (f"import sys; from webslm.cli import main; {run}"
             f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    args = [a.format(data=data) for a in argv or []]
    done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]", done.stdout
