"""Property-based tests (Hypothesis) over every reader of untrusted input: whatever bytes a user's
file, a download or a client holds, webslm answers with its documented outcome, never a traceback.

Readers are fed random JSON, random bytes, JSON nested past any limit, and -- the inputs that find
real bugs -- valid documents with one part replaced by a random value. A reader returns its value
or raises BadInput (exit 2); a command ends with a documented exit code and at most one line on
stderr, which is never a crash line. Examples per test are capped (PROPERTY) so that the whole
file runs in CI well under two minutes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from browser.fakedist import make_fake_dist
from conftest import REPO_ROOT
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from webslm import finetune
from webslm.chatdata import read_chat_data
from webslm.cli import build_parser, main
from webslm.errors import BadInput, WebslmError
from webslm.hub import check_safetensors_header
from webslm.provenance import load_provenance, statement
from webslm.safetensors_index import read_weight_map
from webslm.serve import Site, find_models, serving_in_thread
from webslm.toolchain.lock import LOCK_NAME, load_lock
from webslm.webllm import read_app_config, read_chat_config

PROPERTY = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
DOCUMENTED_EXIT_CODES = {0, 1, 2, 3}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
deep_json = st.integers(min_value=60, max_value=20_000).flatmap(
    lambda depth: st.sampled_from([b"[" * depth + b"]" * depth,
                                   b'{"a":' * depth + b"1" + b"}" * depth]))


def encoded(value: Any) -> bytes:
    return json.dumps(value).encode()


def child_paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a JSON document a value sits (the document itself is ())."""
    yield path
    items = value.items() if isinstance(value, dict) else enumerate(value) \
        if isinstance(value, list) else ()
    for key, child in items:
        yield from child_paths(child, (*path, key))


@st.composite
def near_misses(draw: st.DrawFn, valid: Any) -> Any:
    """A valid document with one part replaced by a random JSON value, or removed."""
    document = copy.deepcopy(valid)
    path = draw(st.sampled_from(list(child_paths(document))))
    if not path:
        return draw(json_values)
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_values)
    return document


def untrusted(valid: Any) -> st.SearchStrategy[bytes]:
    """Bytes a reader of `valid`-shaped documents may be handed."""
    return st.one_of(near_misses(valid).map(encoded), json_values.map(encoded), deep_json,
                     st.binary(max_size=64))


def one_line_outcome(code: int, err: str) -> None:
    """A documented exit code, at most one line on stderr, never a traceback or a crash."""
    assert code in DOCUMENTED_EXIT_CODES, (code, err)
    assert err.count("\n") <= 1 and "Traceback" not in err, err
    assert "internal error" not in err, err


def reads_or_refuses(read: Any, *args: Any) -> None:
    """A reader returns, or refuses with BadInput; any other exception is a bug."""
    with contextlib.suppress(BadInput):
        read(*args)


# ---------------------------------------------------------------------------- valid documents


QWEN2_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64,
    "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2,
    "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 512,
    "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
    "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "torch_dtype": "float32", "eos_token_id": 1, "bos_token_id": 0,
}
SAFETENSORS_HEADER = {
    "__metadata__": {"format": "pt"},
    "model.embed_tokens.weight": {"dtype": "F32", "shape": [4, 2], "data_offsets": [0, 32]},
    "lm_head.weight": {"dtype": "F16", "shape": [2, 2], "data_offsets": [32, 40]},
}
A = "a" * 64
PROVENANCE = statement(
    outputs={"libs/m-webgpu.wasm": A, "mlc-chat-config.json": A},
    spec={"model": "/models/m", "name": "m", "quantization": "q4f16_1"},
    model={"id": "/models/m", "revision": None, "source": "local"},
    inputs={"config.json": A}, toolchain_id=A, image="webslm-toolchain:x",
    image_digest="sha256:" + A, lock_digest=A, webllm_version="0.2.79",
    stages={"compile": {"cache_key": A, "output": A}})
CHAT_LINE = {"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello"}]}


@pytest.fixture(scope="module")
def fake_dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_dist(tmp_path_factory.mktemp("dist") / "dist", "tiny")


# ---------------------------------------------------------------------------- JSON files


@PROPERTY
@given(document=untrusted(QWEN2_CONFIG))
def test_normalize_and_spec_answer_any_config_json(tmp_path: Path, capsys, document: bytes) -> None:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_bytes(document)
    for argv in (["normalize", str(model), "--out", str(tmp_path / "out")],
                 ["spec", "--model", str(model)]):
        code = main(argv)
        one_line_outcome(code, capsys.readouterr().err)
        assert code in (0, 2)


@PROPERTY
@given(document=untrusted(PROVENANCE))
def test_any_provenance_json_is_read_or_refused(tmp_path: Path, document: bytes) -> None:
    (tmp_path / "provenance.json").write_bytes(document)
    reads_or_refuses(load_provenance, tmp_path / "provenance.json")


@PROPERTY
@given(data=st.data())
def test_any_web_config_is_read_or_refused(fake_dist: Path, tmp_path: Path, data: st.DataObject
                                           ) -> None:
    for name, reader in (("webllm-app-config.json", read_app_config),
                         ("mlc-chat-config.json", read_chat_config)):
        valid = json.loads((fake_dist / name).read_text())
        path = tmp_path / name
        path.write_bytes(data.draw(untrusted(valid)))
        reads_or_refuses(reader, path)


LOCK = json.loads((REPO_ROOT / "docker" / LOCK_NAME).read_text())


@PROPERTY
@given(document=untrusted(LOCK))
@example(document=encoded({**LOCK, "patches": {"01.py": None}}))  # found: a pin that is no text
def test_any_toolchain_lock_is_read_or_refused(tmp_path: Path, document: bytes) -> None:
    (tmp_path / LOCK_NAME).write_bytes(document)
    reads_or_refuses(load_lock, tmp_path)


@PROPERTY
@given(config=untrusted({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
                         "target_modules": ["q_proj"]}),
       record=untrusted({"base_model": "m", "recipe": {"epochs": 1.0}, "data_digest": A}))
def test_merge_answers_any_adapter_folder(tiny_qwen2: Path, tmp_path: Path, capsys,
                                          config: bytes, record: bytes) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir(exist_ok=True)
    (adapter / "adapter_config.json").write_bytes(config)
    (adapter / "webslm.json").write_bytes(record)
    (adapter / "adapter_model.safetensors").write_bytes(b"\2\0\0\0\0\0\0\0{}")

    class NoTorch:  # TEST STAND-IN for webslm.training (torch), past every check of the inputs
        @staticmethod
        def merge_into(*args: Any) -> None:
            raise BadInput("stand-in: the inputs passed every check")

    with mock.patch.object(finetune, "_training", NoTorch):
        code = main(["merge", "--base", str(tiny_qwen2), "--adapter", str(adapter),
                     "--out", str(tmp_path / "out")])
    one_line_outcome(code, capsys.readouterr().err)
    assert code == 2 and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- weights


@PROPERTY
@given(header=near_misses(SAFETENSORS_HEADER).map(encoded) | deep_json | st.binary(max_size=64),
       data_bytes=st.integers(min_value=0, max_value=64),
       length_error=st.sampled_from([0, 0, 1, -1, 1 << 40]))
@example(header=encoded({"w": {"dtype": [], "shape": [1], "data_offsets": [0, 4]}}), data_bytes=4,
         length_error=0)  # found: a dtype that is a list
def test_any_safetensors_header_is_read_or_refused(tmp_path: Path, header: bytes,
                                                   data_bytes: int, length_error: int) -> None:
    path = tmp_path / "model.safetensors"
    length = max(len(header) + length_error, 0)
    path.write_bytes(length.to_bytes(8, "little") + header + bytes(data_bytes))
    reads_or_refuses(check_safetensors_header, path)


@PROPERTY
@given(document=untrusted({"metadata": {"total_size": 40},
                           "weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}))
def test_any_safetensors_index_is_read_or_refused(tmp_path: Path, document: bytes) -> None:
    path = tmp_path / "model.safetensors.index.json"
    path.write_bytes(document)
    reads_or_refuses(read_weight_map, path)


# ---------------------------------------------------------------------------- chat data


@PROPERTY
@given(lines=st.lists(untrusted(CHAT_LINE) | st.text(max_size=40).map(str.encode), max_size=4))
def test_data_check_answers_any_jsonl(tmp_path: Path, capsys, lines: list[bytes]) -> None:
    data = tmp_path / "chat.jsonl"
    data.write_bytes(b"\n".join(lines))
    reads_or_refuses(read_chat_data, [data])
    code = main(["data", "check", str(data)])
    *problems, last = capsys.readouterr().err.splitlines() or [""]
    assert code in (0, 2)
    assert all(line.startswith(f"{data}:") for line in problems), problems  # FILE:LINE: what
    one_line_outcome(code, last + "\n")


# ---------------------------------------------------------------------------- serve


@pytest.fixture(scope="module")
def served(fake_dist: Path) -> Iterator[tuple[int, list[str]]]:
    web = fake_dist.parent.parent / "web"
    web.mkdir(exist_ok=True)
    (web / "index.html").write_text("<!doctype html>")
    log: list[str] = []
    with serving_in_thread(Site(web=web, models=find_models([fake_dist])),
                           log=log.append) as server:
        yield server.server_port, log


header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
path_text = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=40)  # no space
request_paths = st.one_of(
    path_text.filter(bool),
    st.sampled_from(["/", "/models/index.json", "/models/tiny/resolve/main/",
                     "/models/tiny/resolve/main/params_shard_0.bin"]).flatmap(
        lambda base: path_text.map(lambda tail: base + tail)))


@PROPERTY
@given(method=st.sampled_from(["GET", "HEAD", "POST", "BREW", "get"]), path=request_paths,
       range_header=st.none() | header_text.map(lambda t: "bytes=" + t) | header_text,
       version=st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/9", ""]))
def test_serve_answers_any_request(served: tuple[int, list[str]], capfd, method: str, path: str,
                                   range_header: str | None, version: str) -> None:
    port, log = served
    request = f"{method} {path} {version}".rstrip() + "\r\nHost: 127.0.0.1\r\n"
    if range_header is not None:
        request += f"Range: {range_header}\r\n"
    request += "Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(request.encode())
        answer = b""
        while chunk := client.recv(1 << 16):
            answer += chunk
    if version in ("HTTP/1.1", "HTTP/1.0"):  # (else HTTP/0.9 rules: perhaps a body alone)
        assert answer.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), answer[:80]
        status = int(answer.split()[1])
        assert 200 <= status < 500 or status == 501, answer[:80]
    err = capfd.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err


# ---------------------------------------------------------------------------- CLI numbers


NUMERIC_FLAGS = [["build", "--cpus"], ["build", "--memory"], ["build", "--jobs"],
                 ["build", "--context-window-size"], ["spec", "--prefill-chunk-size"],
                 ["audit", "--artifact", "x", "--download-timeout"],
                 ["audit", "--artifact", "x", "--max-download-mib"],
                 ["finetune", "--data", "x", "--lr"], ["finetune", "--data", "x", "--epochs"],
                 ["finetune", "--data", "x", "--seed"], ["finetune", "--data", "x", "--lora-r"],
                 ["finetune", "--data", "x", "--activation-budget"]]
number_texts = st.one_of(
    st.text(max_size=12),
    st.floats().map(repr), st.integers().map(str),
    st.integers(min_value=-5, max_value=5).map(lambda e: f"1e{e * 80}"),
    st.sampled_from(["nan", "inf", "-inf", "1_000", " 7 ", "0x10", "8g", "6m", "1m", "5.5k"]))


@PROPERTY
@given(flag=st.sampled_from(NUMERIC_FLAGS), text=number_texts)
def test_any_number_on_the_command_line_is_parsed_or_refused_in_one_line(flag: list[str],
                                                                         text: str) -> None:
    try:
        args = build_parser().parse_args([*flag, text])
    except WebslmError as error:
        assert error.exit_code == 2 and "\n" not in error.line()
        return
    value = getattr(args, flag[-1].lstrip("-").replace("-", "_"))
    assert isinstance(value, int | float)
    assert value == value and abs(value) != float("inf")
    assert value >= 0

