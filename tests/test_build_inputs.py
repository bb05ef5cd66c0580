"""`webslm build` refuses bad input in one line, with exit code 2, before any container starts and
without writing anything; a missing Docker engine is exit 3. No engine needed for these."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from webslm.cli import main
from webslm.hub import check_model_folder
from webslm.modelfiles import is_sentencepiece_model
from webslm.pipeline import BuildOptions, build_many
from webslm.spec import resolve_spec


def without_config(model: Path) -> None:
    (model / "config.json").unlink()


def unsupported_architecture(model: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "mamba"
    (model / "config.json").write_text(json.dumps(config))


def corrupt_safetensors_header(model: Path) -> None:
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(struct.pack("<Q", len(data) * 2) + data[8:])


def pickle_weights(model: Path) -> None:
    (model / "model.safetensors").rename(model / "pytorch_model.bin")


def rewrite_header(model: Path, change) -> None:
    """Apply `change` to the first tensor's entry of model.safetensors' JSON header."""
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    change(header[next(k for k in header if k != "__metadata__")])
    encoded = json.dumps(header).encode()
    weights.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length:])


def rewrite_whole_header(model: Path, change) -> None:
    """Apply `change` to model.safetensors' whole JSON header (tensor name -> entry)."""
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    change({k: v for k, v in header.items() if k != "__metadata__"})
    encoded = json.dumps(header).encode()
    weights.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length:])


def shape_larger_than_its_bytes(model: Path) -> None:
    rewrite_header(model, lambda t: t.update(shape=[d * 2 for d in t["shape"]] or [2]))


def shape_not_a_list(model: Path) -> None:
    rewrite_header(model, lambda t: t.update(shape="64"))


def overlapping_offsets(model: Path) -> None:
    def overlap(tensors: dict) -> None:
        first, second = sorted(tensors.values(), key=lambda t: t["data_offsets"])[:2]
        second.update(data_offsets=first["data_offsets"], shape=first["shape"],
                      dtype=first["dtype"])
    rewrite_whole_header(model, overlap)


def offsets_not_integers(model: Path) -> None:
    rewrite_header(model, lambda t: t.update(data_offsets=[0.0, "8"]))


def dtype(name: str):
    def spoil(model: Path) -> None:
        rewrite_header(model, lambda t: t.update(dtype=name))
    return spoil


def index_not_an_object(model: Path) -> None:
    (model / "model.safetensors.index.json").write_text("[1, 2]")


def index_not_json(model: Path) -> None:
    (model / "model.safetensors.index.json").write_text("{weight_map")


def own_model_code(model: Path) -> None:
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomModel"}
    (model / "config.json").write_text(json.dumps(config))


PEM_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUA\n" \
          "-----END OPENSSH PRIVATE KEY-----\n"


def linked_outside(name: str):
    """`name` in the model folder becomes a symbolic link to a private key beside it."""
    def spoil(model: Path) -> None:
        key = model.parent / "id_rsa"
        key.write_text(PEM_KEY)
        (model / name).unlink(missing_ok=True)
        (model / name).symlink_to(key)
    return spoil


def replaced_by(name: str, data: bytes):
    def spoil(model: Path) -> None:
        (model / name).write_bytes(data)
    return spoil


@pytest.mark.parametrize("spoil, message", [
    (linked_outside("merges.txt"), "merges.txt is a symbolic link to"),
    (linked_outside("tokenizer.model"), "tokenizer.model is a symbolic link to"),
    (linked_outside("tokenizer_config.json"), "tokenizer_config.json is a symbolic link to"),
    (replaced_by("tokenizer.model", PEM_KEY.encode()), "is not a SentencePiece model"),
    (replaced_by("merges.txt", PEM_KEY.encode()), "is not a BPE merges file"),
    (replaced_by("merges.txt", b"\x00\xff\xfe"), "is not UTF-8 text"),
    (replaced_by("tokenizer_config.json", PEM_KEY.encode()), "is not valid JSON"),
    (replaced_by("chat_template.jinja", PEM_KEY.encode()), "is not a Jinja chat template"),
    (without_config, "has no config.json"),
    (unsupported_architecture, "unsupported architecture"),
    (corrupt_safetensors_header, "corrupt safetensors header"),
    (pickle_weights, "pickle weights"),
    (own_model_code, "auto_map"),
    (offsets_not_integers, "data_offsets are not two integers"),
    (shape_larger_than_its_bytes, "bytes but its data_offsets span"),
    (shape_not_a_list, "not a list of sizes"),
    (overlapping_offsets, "overlap"),
    (dtype("F64"), "dtype 'F64', which MLC-LLM v0.19.0 cannot convert"),
    (dtype("C64"), "dtype 'C64'"),
    (dtype("Q3_K"), "dtype 'Q3_K'"),
    (index_not_an_object, "is not a JSON object with a weight_map"),
    (index_not_json, "model.safetensors.index.json: it is not valid JSON"),
])
def test_bad_models_fail_in_one_line_and_write_nothing(
        no_toolchain_needed: None, tiny_qwen2: Path, tmp_path: Path, spoil, message: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    model = Path(shutil.copytree(tiny_qwen2, tmp_path / "model"))
    spoil(model)
    out = tmp_path / "dist"
    assert main(["build", "--model", str(model), "--name", "m", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("webslm: error: ")
    assert message in error
    assert not out.exists()
    assert not (tmp_path / "xdg" / "webslm" / "stages").exists()


def test_links_inside_the_folder_are_followed(no_toolchain_needed: None, tiny_qwen2: Path,
                                             tmp_path: Path) -> None:
    model = Path(shutil.copytree(tiny_qwen2, tmp_path / "model"))
    (model / "real").mkdir()
    (model / "tokenizer.json").rename(model / "real" / "tokenizer.json")
    (model / "tokenizer.json").symlink_to(Path("real") / "tokenizer.json")
    assert check_model_folder(model)[1] == check_model_folder(tiny_qwen2)[1]


def sentencepiece_bytes(*pieces: str) -> bytes:
    """A SentencePiece ModelProto as protobuf writes it: pieces {piece, score}, trainer_spec."""
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload
    return b"".join(field(1, field(1, p.encode()) + b"\x15\x00\x00\x80\xbf")
                    for p in pieces) + field(2, b"\x30\x01")


def test_a_sentencepiece_model_is_told_from_other_files() -> None:
    model = sentencepiece_bytes("<unk>", "\u2581the", "a")
    assert is_sentencepiece_model(model)
    assert not is_sentencepiece_model(model[:-1])  # cut short
    assert not is_sentencepiece_model(PEM_KEY.encode())
    assert not is_sentencepiece_model(b"")
    assert not is_sentencepiece_model(sentencepiece_bytes()[0:0] + b"\x12\x02\x30\x01")


@pytest.mark.parametrize("flags, message", [
    (["--base-url", "models/"], "absolute http(s) URL"),
    (["--cpus", "0"], "--cpus"),
    (["--jobs", "0"], "--jobs"),
    (["--quantization", "q4f16_9"], "unknown quantization"),
])
def test_bad_options_fail_in_one_line(no_toolchain_needed: None, tiny_qwen2: Path,
                                      tmp_path: Path, flags: list[str], message: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dist"
    assert main(["build", "--model", str(tiny_qwen2), "--out", str(out), *flags]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error
    assert not out.exists()


def test_two_models_may_not_share_a_name(no_toolchain_needed: None, tiny_qwen2: Path,
                                         tmp_path: Path) -> None:
    from webslm.errors import BadInput

    spec = resolve_spec(model=str(tiny_qwen2), name="same")
    with pytest.raises(BadInput, match="--name"):
        build_many([spec, spec], BuildOptions(out=tmp_path / "dist"))


def test_no_docker_engine_is_exit_3(tiny_qwen2: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from webslm.toolchain import Toolchain

    toolchain = Toolchain(id="0" * 64, image="webslm-toolchain:any", lock_digest="1" * 64,
                          webllm_version="0.2.79", env={}, seccomp_profile=None)
    monkeypatch.setattr("webslm.toolchain.current_toolchain", lambda: toolchain)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    out = tmp_path / "dist"
    assert main(["build", "--model", str(tiny_qwen2), "--out", str(out)]) == 3
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("webslm: error: ")
    assert not out.exists()


def test_unreadable_weights_are_exit_3_naming_the_file(tiny_qwen2: Path, tmp_path: Path) -> None:
    """Through the real CLI, as the same user without the capabilities that let root read any
    file: a checkout inside a folder only its owner can enter (a 0700 home) stays importable."""
    model = Path(shutil.copytree(tiny_qwen2, tmp_path / "model"))
    os.chmod(model / "model.safetensors", 0o000)
    no_override = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search",
                   "--inh-caps", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    done = subprocess.run(
        [*no_override, sys.executable, "-m", "webslm", "build", "--model", str(model),
         "--out", str(tmp_path / "dist")], capture_output=True, text=True, check=False,
        cwd=tmp_path, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"webslm: error: cannot read {model / 'model.safetensors'} (Permission denied); "
        "check the file's permissions"]
    assert not (tmp_path / "dist").exists()
