"""`webslm data check`: every problem reported at once as FILE:LINE, exit 2; a summary otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from webslm.chatdata import read_chat_data
from webslm.cli import main

REPO_ROOT = Path(__file__).resolve().parent.parent
SYSTEM = {"role": "system", "content": "You are a careful assistant."}


def chat(*turns: tuple[str, str], system: dict | None = SYSTEM) -> str:
    messages = ([system] if system else []) + [{"role": r, "content": c} for r, c in turns]
    return json.dumps({"messages": messages})


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_valid_file_passes_with_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write(tmp_path / "ok.jsonl", [
        chat(("user", "Hi"), ("assistant", "Hello!")),
        "",
        chat(("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2")),
    ])
    assert main(["data", "check", str(data)]) == 0
    out = capsys.readouterr().out
    assert "2 conversations, 3 assistant turns" in out
    assert "data digest: sha256:" in out


def test_every_problem_is_reported_with_file_and_line(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    bad = write(tmp_path / "bad.jsonl", [
        chat(("user", "fine"), ("assistant", "fine")),                      # 1 ok
        "{not json",                                                          # 2
        json.dumps({"conversation": []}),                                     # 3
        chat(("user", "Hi"), ("bot", "Hello")),                               # 4 role, no assistant
        chat(("user", "Hi"), ("assistant", "   ")),                           # 5 empty content
        chat(("user", "Hi"), ("system", "late"), ("assistant", "x")),         # 6 system not first
        chat(("user", "only a question")),                                    # 7 no assistant
        json.dumps({"messages": [{"role": "user", "content": 3},
                                 {"role": "assistant", "content": "x"}]}),    # 8 not a string
        json.dumps({"messages": []}),                                         # 9 empty list
    ])
    assert main(["data", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    expected = [
        f"{bad}:2: not valid JSON",
        f'{bad}:3: expected a JSON object with a "messages" list',
        f"{bad}:4: message 3: role 'bot' is not one of system, user, assistant",
        f"{bad}:4: no assistant message",
        f"{bad}:5: message 3: content is empty",
        f"{bad}:6: message 3: a system message must be the first message",
        f"{bad}:7: no assistant message",
        f"{bad}:8: message 1: content must be a string",
        f'{bad}:9: "messages" must be a non-empty list',
    ]
    for line in expected:
        assert line in err, line
    assert f"{bad}:1:" not in err
    assert err.strip().splitlines()[-1].startswith("webslm: error: 9 problems in the chat data")


def test_problems_across_several_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    first = write(tmp_path / "a.jsonl", ["[]"])
    second = write(tmp_path / "b.jsonl", [chat(("user", "x"), ("assistant", "y")), "42"])
    assert main(["data", "check", str(first), str(second)]) == 2
    err = capsys.readouterr().err
    assert f"{first}:1:" in err and f"{second}:2:" in err


def test_empty_and_missing_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = write(tmp_path / "empty.jsonl", [""])
    assert main(["data", "check", str(empty)]) == 2
    assert f"{empty}:0: no conversations in this file" in capsys.readouterr().err
    assert main(["data", "check", str(tmp_path / "absent.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["data", "check", str(tmp_path)]) == 2
    assert f"data file {tmp_path} is a folder, not a file" in capsys.readouterr().err


def test_a_fifo_is_named_for_what_it_is(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fifo = tmp_path / "chat.jsonl"
    os.mkfifo(fifo)
    assert main(["data", "check", str(fifo)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"data file {fifo} is not a regular file (a FIFO" in err


def test_bad_utf8_is_reported_at_its_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "bad.jsonl"
    good = chat(("user", "Hi"), ("assistant", "Hello")).encode()
    data.write_bytes(good + b"\n" + good + b"\n" + b'{"x": "ab\xff"}\n')
    assert main(["data", "check", str(data)]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first == f"{data}:3: not UTF-8 text (invalid start byte at byte 10 of the line)"


def test_several_system_prompts_warn_but_pass(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    data = write(tmp_path / "mixed.jsonl", [
        chat(("user", "a"), ("assistant", "b")),
        chat(("user", "a"), ("assistant", "b")),
        chat(("user", "a"), ("assistant", "b"), system={"role": "system", "content": "Other."}),
    ])
    assert main(["data", "check", str(data)]) == 0
    captured = capsys.readouterr()
    assert "warning: 2 different system prompts" in captured.err
    assert "system prompts: 2" in captured.out


def test_digest_ignores_json_spacing(tmp_path: Path) -> None:
    line = chat(("user", "a"), ("assistant", "b"))
    spaced = json.dumps(json.loads(line), indent=None, separators=(" ,", " : "))
    one = read_chat_data([write(tmp_path / "one.jsonl", [line])])
    two = read_chat_data([write(tmp_path / "two.jsonl", [spaced])])
    other = read_chat_data([write(tmp_path / "three.jsonl", [chat(("user", "a"),
                                                                  ("assistant", "c"))])])
    assert one.digest == two.digest != other.digest


def test_starter_sets_pass_with_token_counts(tiny_qwen2: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    files = sorted((REPO_ROOT / "finetune" / "data").glob("*.jsonl"))
    assert {f.name for f in files} >= {"medical.jsonl", "legal.jsonl", "insurance.jsonl"}
    assert main(["data", "check", *map(str, files), "--tokenizer", str(tiny_qwen2)]) == 0
    out = capsys.readouterr().out
    assert "tokens (" in out and "in assistant turns, trained on" in out


def test_jsonl_lines_end_at_newline_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """U+2028/U+2029/U+0085 are valid raw inside JSON strings; str.splitlines() splits on them."""
    raw = json.dumps({"messages": [{"role": "user", "content": "a\u2028b\u2029c\x85d"},
                                   {"role": "assistant", "content": "ok"}]}, ensure_ascii=False)
    data = write(tmp_path / "ok.jsonl", [raw, chat(("user", "Hi"), ("assistant", "Hello"))])
    assert main(["data", "check", str(data)]) == 0
    assert "2 conversations" in capsys.readouterr().out


@pytest.mark.parametrize("line, problem", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"messages": [{"role": "user", "content": "\\ud800"}, '
     '{"role": "assistant", "content": "x"}]}', "lone UTF-16 surrogate"),
])
def test_hostile_lines_are_problems_not_tracebacks(tmp_path: Path, line: str, problem: str,
                                                   capsys: pytest.CaptureFixture) -> None:
    data = write(tmp_path / "bad.jsonl", [chat(("user", "Hi"), ("assistant", "Hello")), line])
    assert main(["data", "check", str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"{data}:2: ") and problem in err[0]
    assert err[-1].startswith("webslm: error: 1 problem in the chat data;")


def test_printed_problems_are_capped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write(tmp_path / "bad.jsonl", ["{not json"] * 120)
    assert main(["data", "check", str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 52 and err[50] == "... and 70 more"
    assert err[-1].startswith("webslm: error: 120 problems in the chat data")


@pytest.mark.parametrize("argv", [
    ["data", "check", "{data}", "--tokenizer", "{model}"],
    ["finetune", "--data", "{data}", "--base", "{model}", "--out", "{out}"],
])
def test_without_the_finetune_extra_it_says_what_to_install(tmp_path: Path, tiny_qwen2: Path,
                                                            argv: list[str]) -> None:
    """The real CLI in a Python where torch and transformers cannot be imported."""
    data = write(tmp_path / "ok.jsonl", [chat(("user", "Hi"), ("assistant", "Hello"))])
    filled = [a.format(data=data, model=tiny_qwen2, out=tmp_path / "out") for a in argv]
    blocked = ("import sys; sys.modules['torch'] = sys.modules['transformers'] = None; "
               "from webslm.launch import run; sys.argv[0] = 'webslm'; run()")
    done = subprocess.run([sys.executable, "-c", blocked, *filled], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'webslm[finetune]'" in lines[0], done.stderr
    assert not (tmp_path / "out").exists()
