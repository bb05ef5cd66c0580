"""No traceback, ever: every failure a user can cause is one line on stderr with a documented exit
code (2 bad input, 3 missing environment, 130 Ctrl-C), and anything unforeseen is one line naming
a crash log that holds the traceback (exit 1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from webslm.cli import main
from webslm.errors import BadInput
from webslm.toolchain import lock as toolchain_lock
from webslm.webllm import read_app_config, read_chat_config

REPO = Path(__file__).resolve().parent.parent
DEEP = b"[" * 5000 + b"]" * 5000  # past Python's recursion limit when parsed
TOO_DEEP = b'{"a": ' * 65 + b"1" + b"}" * 65  # parses, but nests past webslm's limit


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("webslm: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def safetensors_with_header(header: bytes) -> bytes:
    return len(header).to_bytes(8, "little") + header


# ---------------------------------------------------------------------------- deeply nested JSON


@pytest.mark.parametrize("document", [DEEP, TOO_DEEP], ids=["recursion", "past-the-limit"])
@pytest.mark.parametrize("command", [["normalize", "{model}"], ["normalize", "{model}/config.json"],
                                     ["spec", "--model", "{model}"]])
def test_deep_json_in_config_json_is_bad_input(tmp_path: Path, capsys, document: bytes,
                                               command: list[str]) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_bytes(document)
    assert main([word.format(model=model) for word in command]) == 2
    assert "config.json: its JSON nests" in one_line_error(capsys)
    assert (model / "config.json").read_bytes() == document


@pytest.mark.parametrize("file, content", [
    ("model.safetensors", safetensors_with_header(DEEP)),
    ("model.safetensors.index.json", DEEP),
])
def test_deep_json_in_weights_is_bad_input_before_any_container(
        no_toolchain_needed: None, tiny_qwen2: Path, tmp_path: Path, capsys, file: str,
        content: bytes) -> None:
    model = Path(shutil.copytree(tiny_qwen2, tmp_path / "model"))
    (model / file).write_bytes(content)
    out = tmp_path / "dist"
    assert main(["build", "--model", str(model), "--out", str(out)]) == 2
    assert f"{file}: its JSON nests too deeply" in one_line_error(capsys)
    assert not out.exists()


def test_deep_provenance_is_bad_input(tmp_path: Path, capsys) -> None:
    (tmp_path / "provenance.json").write_bytes(DEEP)
    assert main(["verify", str(tmp_path)]) == 2
    assert "provenance.json: its JSON nests too deeply" in one_line_error(capsys)


@pytest.mark.parametrize("reader", [read_app_config, read_chat_config])
def test_deep_web_configs_are_bad_input(tmp_path: Path, reader) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(DEEP)
    with pytest.raises(BadInput, match="config.json: its JSON nests too deeply"):
        reader(path)


def test_a_deep_toolchain_lock_is_bad_input(tmp_path: Path) -> None:
    docker = Path(shutil.copytree(REPO / "docker", tmp_path / "docker",
                                  ignore=shutil.ignore_patterns("__pycache__")))
    (docker / toolchain_lock.LOCK_NAME).write_bytes(DEEP)
    for reads_the_lock in (toolchain_lock.load_lock, toolchain_lock.toolchain_id):
        with pytest.raises(BadInput, match="toolchain.lock.json: its JSON nests too deeply"):
            reads_the_lock(docker)


# ---------------------------------------------------------------------------- merge's inputs


@pytest.mark.parametrize("broken, content", [
    ("adapter_config.json", b"{not json"),
    ("adapter_config.json", DEEP),
    ("adapter_config.json", b"[1]"),
    ("webslm.json", b"{not json"),
    ("webslm.json", DEEP),
    ("webslm.json", b'"a string"'),
])
def test_merge_refuses_a_malformed_adapter_folder(tiny_qwen2: Path, tmp_path: Path, capsys,
                                                  broken: str, content: bytes) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (adapter / "adapter_model.safetensors").write_bytes(safetensors_with_header(b"{}"))
    (adapter / broken).write_bytes(content)
    out = tmp_path / "merged"
    assert main(["merge", "--base", str(tiny_qwen2), "--adapter", str(adapter),
                 "--out", str(out)]) == 2
    assert broken in one_line_error(capsys)
    assert not out.exists()


# ---------------------------------------------------------------------------- numbers on the CLI


@pytest.mark.parametrize("argv", [
    ["build", "--cpus", "nan"], ["build", "--cpus", "inf"], ["build", "--cpus", "999"],
    ["build", "--cpus", "0.001"], ["build", "--memory", "abc"], ["build", "--memory", "1m"],
    ["build", "--memory", "99999999999999999999g"],
    ["build", "--context-window-size", "99999999999999999999"],
    ["spec", "--prefill-chunk-size", "99999999999999999999"], ["build", "--jobs", "0"],
    ["audit", "--artifact", "x", "--download-timeout", "nan"],
    ["audit", "--artifact", "x", "--download-timeout", "inf"],
    ["audit", "--artifact", "x", "--max-download-mib", "-1"],
    ["finetune", "--data", "x", "--lr", "nan"], ["finetune", "--data", "x", "--epochs", "1e308"],
    ["finetune", "--data", "x", "--seed", "99999999999999999999"],
    ["finetune", "--data", "x", "--activation-budget", "nan"],
    ["serve", "--port", "1e3"],
])
def test_a_bad_number_stops_before_anything_runs(no_toolchain_needed: None, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, capsys,
                                                  argv: list[str]) -> None:
    """Checked as the flag is parsed: before the Docker engine, the toolchain or a model is
    looked up."""
    def no_docker(*args, **kwargs):
        raise AssertionError("the Docker engine was looked up")

    monkeypatch.setattr("docker.from_env", no_docker)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert f"argument {argv[-2]}: '{argv[-1]}' is not" in one_line_error(capsys)
    assert not any(tmp_path.iterdir())


def test_good_numbers_are_parsed_as_their_kind() -> None:
    from webslm.cli import build_parser

    args = build_parser().parse_args(["build", "--cpus", "1", "--memory", "512m",
                                      "--context-window-size", "8192", "--jobs", "2"])
    assert (args.cpus, args.memory, args.context_window_size, args.jobs) == (1, 512 << 20,
                                                                            8192, 2)
    assert build_parser().parse_args(["build", "--memory", "8GB"]).memory == 8 << 30
