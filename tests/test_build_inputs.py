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


@pytest.mark.parametrize("spoil, message", [
    (without_config, "has no config.json"),
    (unsupported_architecture, "unsupported architecture"),
    (corrupt_safetensors_header, "corrupt safetensors header"),
    (pickle_weights, "pickle weights"),
    (own_model_code, "auto_map"),
    (offsets_not_integers, "data_offsets are not two integers"),
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
