"""No traceback, ever: every failure a user can cause is one line on stderr with a documented exit
code (2 bad input, 3 missing environment, 130 Ctrl-C), and anything unforeseen is one line naming
a crash log that holds the traceback (exit 1)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from browser.fakedist import make_fake_dist
from conftest import REAL_TINY, writable_copy

from webslm.cache import StageCache, StageKey
from webslm.cli import main
from webslm.crash import TRACEBACK_SWITCH, exit_on_error
from webslm.errors import BadInput, MissingEnvironment
from webslm.files import atomic_directory
from webslm.serve import Site, find_models, serving_in_thread
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


def test_a_deep_app_config_is_refused_by_publish_and_fails_verify(tmp_path: Path, capsys) -> None:
    dist = writable_copy(REAL_TINY / "dist-q4f32_1", tmp_path / "dist")
    (dist / "webllm-app-config.json").write_bytes(DEEP)
    assert main(["publish", str(dist), "--repo", "owner/name", "--dry-run"]) == 2
    assert "webllm-app-config.json: its JSON nests too deeply" in one_line_error(capsys)
    assert main(["verify", str(dist)]) == 1  # a shipped file that is not what was built
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "webllm-app-config.json" in err


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


# ---------------------------------------------------------------------------- serve


def test_serve_logs_one_short_line_for_an_aborted_download(tmp_path: Path, capfd) -> None:
    dist = tmp_path / "dist"
    make_fake_dist(dist, "tiny")
    (dist / "tiny" / "params_shard_0.bin").write_bytes(bytes(32 << 20))  # more than a socket holds
    web = tmp_path / "web"
    web.mkdir()
    log: list[str] = []
    with serving_in_thread(Site(web=web, models=find_models([dist])), log=log.append) as server:
        for _ in range(3):
            client = socket.create_connection(("127.0.0.1", server.server_port), timeout=10)
            client.sendall(b"GET /models/tiny/resolve/main/params_shard_0.bin HTTP/1.1\r\n"
                           b"Host: x\r\n\r\n")
            client.recv(4096)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # a reset: the server's next write fails
        deadline = time.monotonic() + 10
        while sum("closed the connection" in line for line in log) < 3 \
                and time.monotonic() < deadline:
            time.sleep(0.05)
    aborted = [line for line in log if "closed the connection" in line]
    assert len(aborted) == 3 and all("\n" not in line for line in aborted), log
    assert "GET /models/tiny/resolve/main/params_shard_0.bin" in aborted[0]
    assert len(log) == 6  # per download: its access line and the one abort line
    assert "Traceback" not in capfd.readouterr().err


# ---------------------------------------------------------------------------- the file system


class FullDisk:
    """A file opened for writing on a full disk: every write fails with ENOSPC."""

    def __init__(self, fd: int, *args, **kwargs) -> None:
        self.fd = fd

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc_info) -> None:
        os.close(self.fd)

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_under_out_is_exit_3_naming_the_folder(tiny_qwen2: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr("webslm.files.os.fdopen", FullDisk)
    assert main(["normalize", str(tiny_qwen2), "--out", str(out)]) == 3
    assert f"no space left in {out} (No space left on device)" in one_line_error(capsys)
    assert list(out.iterdir()) == []  # nothing half-written


def test_a_full_disk_while_a_folder_is_written_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "out" / "model"
    with pytest.raises(MissingEnvironment, match=f"no space left in {final.parent}"):
        with atomic_directory(final, "provenance.json") as staging:
            (staging / "half.bin").write_bytes(b"x")
            no_space()
    assert list(final.parent.iterdir()) == []


def test_a_full_cache_is_exit_3_naming_it_and_keeps_no_half_entry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = StageCache(tmp_path / "cache")
    output = tmp_path / "output"
    output.mkdir()
    (output / "f").write_text("x")
    key = StageKey(stage="stage", toolchain_id="t", inputs={}, arguments=())
    monkeypatch.setattr("webslm.cache.os.replace", no_space)
    with pytest.raises(MissingEnvironment, match=f"no space left in {cache.root}"):
        cache.store(key, output, {"f": "digest"})
    assert cache._read(key) is None and list(cache.scratch.iterdir()) == []


def test_a_full_disk_met_anywhere_else_is_exit_3(monkeypatch: pytest.MonkeyPatch,
                                                 capsys) -> None:
    monkeypatch.setattr("webslm.cli._cmd_spec", no_space)
    assert main(["spec"]) == 3
    assert "no space left on the device" in one_line_error(capsys)


@pytest.mark.parametrize("argv", [["normalize", "{long}"],
                                  ["build", "--model", "{model}", "--out", "{long}"],
                                  ["data", "check", "{long}/chat.jsonl"],
                                  ["verify", "{long}"]])
def test_a_name_too_long_is_bad_input(no_toolchain_needed: None, tiny_qwen2: Path,
                                      tmp_path: Path, capsys, argv: list[str]) -> None:
    long = str(tmp_path / ("a" * 300))
    assert main([word.format(long=long, model=tiny_qwen2) for word in argv]) == 2
    assert "too long" in one_line_error(capsys)


# ---------------------------------------------------------------------------- the unforeseen


def crash(args) -> int:
    raise ZeroDivisionError(f"bug near {TOKEN}\nsecond line {SECRET}")


TOKEN = "hf_" + "x" * 34  # token-shaped
SECRET = "an-unshaped-secret-token"  # the user's token, shaped like nothing


def test_a_bug_is_one_line_naming_a_crash_log_without_the_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(TRACEBACK_SWITCH, raising=False)
    monkeypatch.setattr("webslm.cli._cmd_spec", crash)
    assert main(["spec"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and TOKEN not in err, err
    assert err.startswith("webslm: internal error (ZeroDivisionError: bug near *** second line "
                          "***)")
    [log] = (tmp_path / "xdg" / "webslm" / "crash").iterdir()
    assert f"the traceback is in {log} (set {TRACEBACK_SWITCH}=1 to print it)" in err
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in crash" in text
    assert TOKEN not in text and SECRET not in text and (log.stat().st_mode & 0o777) == 0o600


def test_a_bug_naming_a_non_utf8_file_still_gets_its_crash_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    """A file name that is not UTF-8 reaches Python as lone surrogates; the log keeps them
    escaped rather than failing to write and ending in the traceback it was to hold."""
    name = os.fsdecode(b"model-\xff")

    def crash_on_path(args) -> int:
        raise ZeroDivisionError(f"bug near {name}")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(TRACEBACK_SWITCH, raising=False)
    monkeypatch.setattr("webslm.cli._cmd_spec", crash_on_path)
    assert main(["spec"]) == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    [log] = (tmp_path / "xdg" / "webslm" / "crash").iterdir()
    assert f"the traceback is in {log}" in err
    assert "bug near model-\\udcff" in log.read_text(encoding="utf-8")


def test_the_switch_prints_the_traceback_instead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(TRACEBACK_SWITCH, "1")
    monkeypatch.setattr("webslm.cli._cmd_spec", crash)
    assert main(["spec"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in crash" in err and TOKEN not in err
    assert not (tmp_path / "xdg" / "webslm" / "crash").exists()


def test_without_a_writable_cache_the_log_goes_to_the_temporary_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.delenv(TRACEBACK_SWITCH, raising=False)
    monkeypatch.setattr("webslm.cli._cmd_spec", crash)
    assert main(["spec"]) == 1
    assert f"the traceback is in {tmp_path / 'tmp' / 'webslm-crash'}" in capsys.readouterr().err


@pytest.mark.parametrize("error, code, line", [
    (ZeroDivisionError("x"), 1, "bench_x: internal error (ZeroDivisionError: x)"),
    (BadInput("no such model", "pass another"), 2, "bench_x: error: no such model; pass another"),
    (KeyboardInterrupt(), 130, "bench_x: interrupted"),
])
def test_bench_scripts_end_the_same_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys,
                                        error: BaseException, code: int, line: str) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(TRACEBACK_SWITCH, raising=False)

    def fails() -> None:
        raise error

    with pytest.raises(SystemExit) as ended:
        exit_on_error("bench_x", fails)
    err = capsys.readouterr().err
    assert ended.value.code == code and err.startswith(line) and err.count("\n") == 1, err


def test_ctrl_c_while_starting_is_one_line_and_exit_130(tmp_path: Path) -> None:
    """Ctrl-C while webslm.cli's imports load (stood in by an import that is interrupted)."""
    shadow = tmp_path / "shadow" / "huggingface_hub"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise KeyboardInterrupt\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow.parent), str(REPO)])}
    done = subprocess.run([sys.executable, "-m", "webslm", "spec"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 130
    assert done.stderr == "webslm: interrupted while starting; nothing was done\n"


def test_invoke_tasks_end_the_same_way() -> None:
    done = subprocess.run([sys.executable, "-m", "invoke", "build", "--cpus", "nan"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr == ("webslm: error: argument --cpus: 'nan' is not a number from 0.01 to "
                           f"{os.cpu_count()}; see `webslm build --help`\n")
